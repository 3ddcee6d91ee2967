"""Handlers that call an Ollama server through the shared ``llm`` breaker.

Loaded in-process by the breaker tests and by ``lifeline worker --app breaker_app:handlers`` in
their worker subprocesses (a handler factory: it gets the runtime's breakers and settings). The
client turns HTTP failures into the three kinds of failure the way the pipeline's providers do.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl

import httpx

from lifeline.breakers import CircuitBreakers, describe
from lifeline.domain import Job, Output, PermanentError, TransientError
from lifeline.queue.worker import Handler, JobResult
from lifeline.runtime import HandlerContext

MODEL = "llama3.2"


@functools.cache
def _ssl() -> ssl.SSLContext:
    return httpx.create_ssl_context()  # once: loading the CA bundle for every call is slow


async def generate(breakers: CircuitBreakers, url: str, prompt: str, *, timeout: float = 5.0) -> str:
    """One ``POST /api/generate`` under the ``llm`` breaker."""
    async with breakers.call("llm"):
        try:
            async with httpx.AsyncClient(base_url=url, timeout=timeout, verify=_ssl()) as client:
                response = await client.post(
                    "/api/generate", json={"model": MODEL, "prompt": prompt, "stream": False}
                )
        except httpx.TransportError as exc:
            raise TransientError(describe(exc)) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            raise PermanentError(f"HTTP {response.status_code}: {response.json().get('error')}")
        return str(response.json()["response"])


def summarizer(breakers: CircuitBreakers, url: str) -> Handler:
    async def summarize(job: Job) -> JobResult:
        await asyncio.sleep(float(job.payload.get("think", 0.0)))  # work before the call
        text = await generate(breakers, url, str(job.payload["text"]))
        n = job.payload["n"]
        return JobResult(outputs=[Output(f"job-{n}", "summary", 0, {"text": text, "pid": os.getpid()})])

    return summarize


def handlers(context: HandlerContext) -> dict[str, Handler]:
    url = context.settings.llm_url
    assert url is not None, "LIFELINE_LLM_URL must point at the Ollama peer"
    summarize = summarizer(context.breakers, url)
    # "action_item" is gated by the llm breaker (STAGE_SERVICES); "llm_probe" is not, so every
    # worker process claims its jobs and meets the breaker in the handler
    return {"action_item": summarize, "llm_probe": summarize}

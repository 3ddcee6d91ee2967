"""The pipeline's stage handlers: ``chunk`` -> ``transcription`` -> (``memory``, ``action_item``).

``lifeline worker --app lifeline.pipeline:build_pipeline`` runs them; :class:`Pipeline` is the
same thing for code that also needs the deletions (the API).
"""

from __future__ import annotations

from lifeline.pipeline.stages import (
    Pipeline,
    Transcript,
    action_item_data,
    memory_data,
    memory_point_id,
    parse_transcript,
)
from lifeline.queue.worker import Handler
from lifeline.runtime import HandlerContext


def build_pipeline(ctx: HandlerContext) -> dict[str, Handler]:
    """The handler factory of the four stages (providers from ``ctx.settings``); the providers
    are closed when the worker that runs them stops."""
    pipeline = Pipeline(ctx.settings, ctx.store, ctx.breakers)
    ctx.closers.append(pipeline.aclose)
    return pipeline.handlers()


__all__ = [
    "Pipeline",
    "Transcript",
    "action_item_data",
    "build_pipeline",
    "memory_data",
    "memory_point_id",
    "parse_transcript",
]

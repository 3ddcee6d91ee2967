"""Schemathesis over the whole OpenAPI schema of a running ``lifeline serve``: no 5xx, and every
response's status code, content type, headers and body are the ones the schema documents.

Three passes over every operation, in this order: as a normal user, as the superuser, and without
a token. The order matters: the superuser pass may delete the normal user, and the anonymous pass
fuzzes the login form until the address is throttled. Each authenticated pass checks afterwards that
its token still works, so a pass cannot silently turn into a wall of 401s.

``LIFELINE_FUZZ_SEED`` and ``LIFELINE_FUZZ_EXAMPLES`` change the seed (fixed by default, so that a
failure reproduces) and the examples per operation.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import lifeline
from lifeline.domain import NextJob

from .conftest import ADMIN, USER, Server, lifeline_serve

SEED = int(os.environ.get("LIFELINE_FUZZ_SEED", "20261128"))
EXAMPLES = int(os.environ.get("LIFELINE_FUZZ_EXAMPLES", "25"))
# every check but use_after_free: DELETE /jobs/{id} cancels a job, which stays readable (cancelled)
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "positive_data_acceptance",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
        "ensure_resource_availability",
        "ignored_auth",
    ]
)
LOGOUT = "/auth/jwt/logout"  # it would revoke the very token a pass runs with
PASS_TIMEOUT = 280.0


@dataclass
class Deployment:
    server: Server
    admin_token: str
    user_token: str
    workdir: Path


async def seed(database_url: str, user_id: str) -> None:
    """A little of everything, so that ids exist: a recording of the user's (its first job is
    job 1, the schema's example), a completed job, dead letters, a delayed job."""
    async with lifeline.connect(database_url) as store:
        first = await store.add_recording(
            "rec-1", user_id=user_id, client_id="phone-1", first_job=NextJob("transcription", {})
        )
        assert first is not None
        for queue, outcome in [("chunk", "complete"), ("chunk", "dead"), ("memory", "dead")]:
            await store.enqueue(queue, {}, user_id=user_id, client_id="phone-1")
            job = await store.claim(queue, worker_id="seed")
            assert job is not None
            if outcome == "complete":
                await store.complete(job)
            else:
                await store.fail(job, "seeded: the LLM answered with invalid JSON", permanent=True)
        await store.enqueue("action_item", {}, delay=3600)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("fuzz")
    with lifeline_serve(root / "server") as server:
        admin_token = server.login(*ADMIN)
        user_id = server.create_user(admin_token, *USER)
        user_token = server.login(*USER)
        asyncio.run(seed(server.database_url, user_id))
        workdir = root / "schemathesis"
        workdir.mkdir()
        # A schema says "a file", never "decodable audio": a schema-valid upload of a PNG is refused
        # with the statuses the operation documents (415, 422, 413), not a valid request rejected.
        (workdir / "schemathesis.toml").write_text(
            "[[operations]]\n"
            'include-name = "POST /api/audio/upload"\n'
            'checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "413", "415", "422"]\n'
        )
        yield Deployment(server, admin_token, user_token, workdir)


def operation_count(server: Server, excluded: set[str]) -> int:
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    return sum(len(operations) for path, operations in schema["paths"].items() if path not in excluded)


def token_works(server: Server, token: str) -> bool:
    r = httpx.get(f"{server.url}/users/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return r.status_code == 200


def run_schemathesis(d: Deployment, token: str | None, exclude: set[str]) -> None:
    args = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{d.server.url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--no-color",
    ]
    if token is not None:
        args += ["--header", f"Authorization: Bearer {token}"]
    for path in sorted(exclude):
        args += ["--exclude-path", path]
    result = subprocess.run(
        args, cwd=d.workdir, capture_output=True, text=True, timeout=PASS_TIMEOUT, check=False
    )
    output = result.stdout + result.stderr
    report = output[output.find("FAILURES") - 40 :] if "FAILURES" in output else output[-6000:]
    assert result.returncode == 0, f"schemathesis failed (seed {SEED}):\n{report}\n\nserver log:\n" + (
        d.server.log_tail(20)
    )
    tested = re.search(r"Tested:\s+(\d+)", output)
    assert tested is not None, output[-3000:]
    assert int(tested.group(1)) == operation_count(d.server, exclude), output[-3000:]


INT64 = (-(2**63), 2**63 - 1)


def integer_inputs(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every integer a client may send: in parameters and request bodies, through $refs."""

    def walk(where: str, node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].rsplit("/", 1)[-1]
                yield from walk(f"{where}->{name}", schema["components"]["schemas"][name])
            if node.get("type") == "integer":
                yield where, node
            for key, value in node.items():
                yield from walk(f"{where}.{key}", value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(where, item)

    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                yield from walk(f"{method.upper()} {path} {parameter['name']}", parameter["schema"])
            yield from walk(f"{method.upper()} {path} body", operation.get("requestBody", {}))


def test_every_integer_a_client_sends_is_bounded_to_what_sqlite_stores(deployment: Deployment) -> None:
    """Random fuzzing seldom draws a 40-digit offset; this finds an unbounded integer for sure
    (SQLite raises OverflowError beyond 64 bits, which would be a 500)."""
    schema = httpx.get(f"{deployment.server.url}/openapi.json", timeout=30).json()
    found = list(integer_inputs(schema))
    assert len(found) >= 8  # limits, offsets, ids, max_retries
    for where, node in found:
        assert INT64[0] <= node.get("minimum", INT64[0] - 1) <= INT64[1], where
        assert INT64[0] <= node.get("maximum", INT64[1] + 1) <= INT64[1], where


def test_as_a_normal_user(deployment: Deployment) -> None:
    assert token_works(deployment.server, deployment.user_token)
    run_schemathesis(deployment, deployment.user_token, exclude={LOGOUT})
    assert token_works(deployment.server, deployment.user_token), "the pass ran without a valid token"


def test_as_the_superuser(deployment: Deployment) -> None:
    assert token_works(deployment.server, deployment.admin_token)
    run_schemathesis(deployment, deployment.admin_token, exclude={LOGOUT})
    assert token_works(deployment.server, deployment.admin_token), "the pass ran without a valid token"


def test_without_a_token(deployment: Deployment) -> None:
    run_schemathesis(deployment, None, exclude=set())

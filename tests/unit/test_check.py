"""``lifeline.check`` judges answers, not just status codes (the real server is in tests/e2e)."""

from __future__ import annotations

import httpx

from lifeline.check import all_passed, run_checks


def deployment(**broken: httpx.Response) -> httpx.MockTransport:
    """A deployment that answers the probes as a healthy one would, except for ``broken``."""
    healthy = {
        "/health": httpx.Response(200, json={"status": "ok", "components": {}}),
        "/readiness": httpx.Response(200, json={"ready": True}),
        "/metrics": httpx.Response(200, text='lifeline_queue_jobs{queue="chunk",state="pending"} 0.0\n'),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return broken.get(request.url.path.strip("/"), healthy.get(request.url.path, httpx.Response(404)))

    return httpx.MockTransport(handler)


def test_a_healthy_deployment_passes() -> None:
    results = run_checks("http://lifeline.test", transport=deployment())
    assert [(r.name, r.ok) for r in results] == [("health", True), ("readiness", True), ("metrics", True)]
    assert all_passed(results)


def test_answers_with_the_wrong_shape_fail() -> None:
    results = run_checks(
        "http://lifeline.test",
        transport=deployment(
            health=httpx.Response(200, json={"status": "unhealthy", "components": {}}),
            readiness=httpx.Response(200, text="<html>a proxy's page</html>"),
            metrics=httpx.Response(200, text="process_cpu_seconds_total 1.0\n"),
        ),
    )
    assert [(r.name, r.ok, r.status) for r in results] == [
        ("health", False, 200),
        ("readiness", False, 200),
        ("metrics", False, 200),
    ]
    assert results[1].detail.startswith("not JSON")
    assert results[2].detail == "no lifeline_queue_jobs samples"
    assert not all_passed(results)
    assert not all_passed([])

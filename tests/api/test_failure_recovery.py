"""The failure-recovery API as users and operators call it."""

from __future__ import annotations

from api.conftest import Api
from lifeline.domain import JobState, NextJob


async def _recording(api: Api, audio_uuid: str, user_id: str, client_id: str) -> int:
    job_id = await api.ctx.store.add_recording(
        audio_uuid, user_id=user_id, client_id=client_id, first_job=NextJob("transcription", {"secret": "x"})
    )
    assert job_id is not None
    return job_id


async def test_a_user_sees_only_their_own_recordings_clients_and_jobs(api: Api) -> None:
    a_id, a = await api.new_user("a@example.com")
    b_id, b = await api.new_user("b@example.com")
    admin = await api.admin()
    job_a = await _recording(api, "rec-a", a_id, "a-phone")
    await _recording(api, "rec-b", b_id, "b-phone")

    owner_only = [
        ("GET", "/api/failure-recovery/pipeline-status/rec-a"),
        ("GET", "/api/failure-recovery/client-stats/a-phone"),
        ("GET", f"/api/failure-recovery/jobs/{job_a}"),
    ]
    for method, url in owner_only:
        assert (await api.client.request(method, url, headers=b)).status_code == 404, url
        assert (await api.client.request(method, url, headers=a)).status_code == 200, url
        assert (await api.client.request(method, url, headers=admin)).status_code == 200, url
    for method, url in [
        ("DELETE", f"/api/failure-recovery/jobs/{job_a}"),
        ("POST", f"/api/failure-recovery/jobs/{job_a}/retry"),
    ]:
        assert (await api.client.request(method, url, headers=b)).status_code == 404, url

    status = (await api.client.get("/api/failure-recovery/pipeline-status/rec-a", headers=a)).json()
    assert status["status"] == "pending"
    assert status["stages"]["transcription"]["jobs"][0]["attempt_history"] == []
    assert "payload" not in status["stages"]["transcription"]["jobs"][0]

    listed = (await api.client.get("/api/failure-recovery/jobs", headers=b)).json()["items"]
    assert [j["recording_id"] for j in listed] == ["rec-b"]
    everything = (await api.client.get("/api/failure-recovery/jobs", headers=admin)).json()["items"]
    assert {j["recording_id"] for j in everything} == {"rec-a", "rec-b"}

    a_stats = (await api.client.get("/api/failure-recovery/queue-stats", headers=a)).json()
    assert a_stats["transcription"]["counts"]["pending"] == 1
    all_stats = (await api.client.get("/api/failure-recovery/queue-stats", headers=admin)).json()
    assert all_stats["transcription"]["counts"]["pending"] == 2

    # the owner may cancel and retry their own job
    assert (await api.client.delete(f"/api/failure-recovery/jobs/{job_a}", headers=a)).status_code == 200
    assert (await api.client.delete(f"/api/failure-recovery/jobs/{job_a}", headers=a)).status_code == 409
    assert (await api.client.post(f"/api/failure-recovery/jobs/{job_a}/retry", headers=a)).status_code == 200
    assert (await api.ctx.store.get_job(job_a)).job.state is JobState.PENDING


async def test_unknown_names_are_404(api: Api) -> None:
    admin = await api.admin()
    for url in [
        "/api/failure-recovery/queue-stats/nope",
        "/api/failure-recovery/persistent-queues/nope",
        "/api/failure-recovery/pipeline-status/never-recorded",
        "/api/failure-recovery/client-stats/no-such-device",
        "/api/failure-recovery/jobs/999",
        "/api/failure-recovery/health/nope",
        "/api/failure-recovery/circuit-breakers/nope",
    ]:
        r = await api.client.get(url, headers=admin)
        assert r.status_code == 404, (url, r.status_code)
    r = await api.client.post("/api/failure-recovery/recovery/nope/trigger", headers=admin)
    assert r.status_code == 404


async def test_dead_letters_are_listed_and_requeued(api: Api) -> None:
    admin = await api.admin()
    store = api.ctx.store
    job_id = await store.enqueue("memory", {})
    job = await store.claim("memory", worker_id="w")
    assert job is not None
    await store.fail(job, "LLM answered with invalid JSON", permanent=True)

    page = (
        await api.client.get("/api/failure-recovery/persistent-queues/memory/dead-letter", headers=admin)
    ).json()
    assert [(j["id"], j["last_error"]) for j in page["items"]] == [(job_id, "LLM answered with invalid JSON")]
    detail = (await api.client.get("/api/failure-recovery/persistent-queues/memory", headers=admin)).json()
    assert detail["recent_failures"][0]["id"] == job_id

    url = f"/api/failure-recovery/persistent-queues/memory/dead-letter/{job_id}/requeue?max_retries=5"
    assert (await api.client.post(url, headers=admin)).status_code == 200
    requeued = (await store.get_job(job_id)).job
    assert (requeued.state, requeued.attempts, requeued.max_attempts) == (JobState.PENDING, 0, 5)
    assert (await api.client.post(url, headers=admin)).status_code == 409  # no longer a dead letter
    wrong_queue = f"/api/failure-recovery/persistent-queues/chunk/dead-letter/{job_id}/requeue"
    assert (await api.client.post(wrong_queue, headers=admin)).status_code == 404
    page = (
        await api.client.get("/api/failure-recovery/persistent-queues/memory/dead-letter", headers=admin)
    ).json()
    assert page["items"] == []


async def test_requeue_all_pause_resume_and_cleanup(api: Api) -> None:
    admin = await api.admin()
    store = api.ctx.store
    for _ in range(3):
        await store.enqueue("chunk", {})
        job = await store.claim("chunk", worker_id="w")
        assert job is not None
        await store.fail(job, "bad", permanent=True)
    r = await api.client.post(
        "/api/failure-recovery/persistent-queues/chunk/dead-letter/requeue-all", headers=admin
    )
    assert r.json()["count"] == 3

    r = await api.client.post(
        "/api/failure-recovery/persistent-queues/chunk/pause?reason=maintenance", headers=admin
    )
    assert r.status_code == 200
    stats = (await api.client.get("/api/failure-recovery/queue-stats/chunk", headers=admin)).json()
    assert (stats["paused"], stats["pause_reason"]) == (True, "maintenance")
    assert await store.claim("chunk", worker_id="w") is None
    await api.client.post("/api/failure-recovery/persistent-queues/chunk/resume", headers=admin)
    job = await store.claim("chunk", worker_id="w")
    assert job is not None
    await store.complete(job)

    r = await api.client.post("/api/failure-recovery/maintenance/cleanup?queue_days=0", headers=admin)
    assert r.status_code == 200
    assert r.json()["jobs_deleted"] == 1


async def test_recovery_can_be_triggered_for_one_job(api: Api) -> None:
    admin = await api.admin()
    store = api.ctx.store
    job_id = await store.enqueue("transcription", {})
    assert await store.claim("transcription", worker_id="stuck-worker") is not None
    r = await api.client.post(
        f"/api/failure-recovery/recovery/transcription/trigger?item_id={job_id}", headers=admin
    )
    assert r.status_code == 200
    assert r.json()["requeued"] == [job_id]
    assert (await store.get_job(job_id)).job.state is JobState.RETRY
    stats = (await api.client.get("/api/failure-recovery/recovery-stats", headers=admin)).json()
    assert (stats["scope"], stats["requeued"]) == ("all", 1)
    wrong = await api.client.post(
        f"/api/failure-recovery/recovery/memory/trigger?item_id={job_id}", headers=admin
    )
    assert wrong.status_code == 404


async def test_overview_health_readiness_and_metrics(api: Api) -> None:
    admin = await api.admin()
    store = api.ctx.store
    await store.enqueue("transcription", {})
    job = await store.claim("transcription", worker_id="w")
    assert job is not None
    await store.complete(job)
    overview = (await api.client.get("/api/failure-recovery/system-overview", headers=admin)).json()
    assert overview["queues"]["transcription"]["counts"]["completed"] == 1
    assert overview["circuit_breakers"] == [] or all("state" in b for b in overview["circuit_breakers"])

    health = await api.client.get("/health")
    assert health.status_code == 200
    assert health.json()["components"]["database"]["status"] == "healthy"
    assert "sqlite" not in health.text  # no URLs ...
    assert "/" not in str(health.json()["components"])  # ... or paths
    assert (await api.client.get("/readiness")).json() == {"ready": True}

    metrics = (await api.client.get("/metrics")).text
    assert 'lifeline_queue_jobs{queue="transcription",state="completed"} 1.0' in metrics
    assert 'lifeline_job_attempts_total{outcome="completed",queue="transcription"} 1.0' in metrics
    assert 'lifeline_job_duration_seconds_count{outcome="completed",queue="transcription"} 1.0' in metrics

    await store.close()  # the store stops answering
    assert (await api.client.get("/readiness")).status_code == 503
    assert (await api.client.get("/health")).status_code == 503
    await store.open()


async def test_retry_takes_a_count_not_a_boolean(api: Api) -> None:
    a_id, a = await api.new_user("a@example.com")
    job = await _recording(api, "rec-a", a_id, "a-phone")
    url = f"/api/failure-recovery/jobs/{job}/retry"
    refused = await api.client.post(url, json={"max_retries": True}, headers=a)
    assert refused.status_code == 422, refused.text
    assert "boolean" in refused.text
    assert (await api.client.delete(f"/api/failure-recovery/jobs/{job}", headers=a)).status_code == 200
    accepted = await api.client.post(url, json={"max_retries": 7}, headers=a)
    assert accepted.status_code == 200, accepted.text
    assert (await api.ctx.store.get_job(job)).job.max_attempts == 7

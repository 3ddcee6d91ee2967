"""GET /api/failure-recovery/throughput: completed jobs per stage over time, scoped like the stats."""

from __future__ import annotations

import time

from api.conftest import Api

URL = "/api/failure-recovery/throughput"
STAGES = {"chunk", "transcription", "memory", "action_item"}


async def _complete(api: Api, queue: str, user_id: str | None, n: int = 1) -> None:
    store = api.ctx.store
    await store.enqueue_many(queue, [{} for _ in range(n)], user_id=user_id)
    for job in await store.claim_many(queue, worker_id="w", limit=n):
        await store.complete(job)


async def test_an_hour_per_minute_by_default(api: Api) -> None:
    admin = await api.admin()
    await _complete(api, "memory", None, 3)
    await _complete(api, "chunk", None)
    await _complete(api, "outside-the-pipeline", None)  # not a stage: not listed
    before = time.time()
    r = await api.client.get(URL, headers=admin)
    after = time.time()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "all"
    assert body["bucket_seconds"] == 60
    assert body["buckets"] == 61
    assert body["start"] % 60 == 0
    assert before - 3600 - 60 < body["start"] <= after - 3600  # the minute that holds an hour ago
    assert set(body["queues"]) == STAGES
    assert all(len(series) == 61 for series in body["queues"].values())
    # the completions fall in the last bucket (or the one before, if a minute turned meanwhile)
    assert sum(body["queues"]["memory"][-2:]) == 3 == sum(body["queues"]["memory"])
    assert sum(body["queues"]["chunk"]) == 1
    assert sum(body["queues"]["transcription"]) == 0


async def test_parameters_choose_span_and_bucket(api: Api) -> None:
    admin = await api.admin()
    await _complete(api, "transcription", None, 2)
    body = (await api.client.get(URL, params={"minutes": 10, "bucket": 300}, headers=admin)).json()
    assert body["bucket_seconds"] == 300
    assert body["buckets"] in (3, 4)  # 10 minutes span the 5-minute buckets of 3 or 4 boundaries
    assert body["start"] % 300 == 0
    assert sum(body["queues"]["transcription"]) == 2


async def test_a_user_sees_their_own_jobs_and_a_superuser_everyones(api: Api) -> None:
    a_id, a = await api.new_user("a@example.com")
    b_id, b = await api.new_user("b@example.com")
    admin = await api.admin()
    await _complete(api, "memory", a_id, 2)
    await _complete(api, "memory", b_id, 1)
    await _complete(api, "action_item", b_id, 4)

    def totals(body: dict[str, object]) -> dict[str, int]:
        queues = body["queues"]
        assert isinstance(queues, dict)
        return {q: sum(series) for q, series in queues.items()}

    mine = (await api.client.get(URL, headers=a)).json()
    assert mine["scope"] == "own"
    assert totals(mine) == {"chunk": 0, "transcription": 0, "memory": 2, "action_item": 0}
    theirs = (await api.client.get(URL, headers=b)).json()
    assert totals(theirs) == {"chunk": 0, "transcription": 0, "memory": 1, "action_item": 4}
    everyone = (await api.client.get(URL, headers=admin)).json()
    assert everyone["scope"] == "all"
    assert totals(everyone) == {"chunk": 0, "transcription": 0, "memory": 3, "action_item": 4}


async def test_out_of_range_parameters_are_422(api: Api) -> None:
    admin = await api.admin()
    for params in [
        {"minutes": 0},
        {"minutes": 1441},
        {"bucket": 9},
        {"bucket": 3601},
        {"minutes": "an hour"},
        {"bucket": 2**70},
    ]:
        r = await api.client.get(URL, params=params, headers=admin)
        assert r.status_code == 422, (params, r.status_code)
    widest = await api.client.get(URL, params={"minutes": 1440, "bucket": 10}, headers=admin)
    assert widest.status_code == 200
    assert widest.json()["buckets"] == 8641


async def test_needs_a_login(api: Api) -> None:
    assert (await api.client.get(URL)).status_code == 401

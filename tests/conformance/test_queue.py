"""Producing and consuming: enqueue, claim, heartbeat, complete, fail, defer, release."""

from __future__ import annotations

import asyncio

import pytest

from conformance.backends import NEXT, OTHER, POLICY, QUEUE, StoreFactory
from conformance.helpers import claim_one, state_of
from fakes import FakeClock, seeded_rng
from lifeline import (
    AttemptOutcome,
    InvalidTransition,
    JobState,
    LeaseLost,
    NextJob,
    NotFound,
    Output,
    RetryPolicy,
    Store,
    StoreError,
)

# -- enqueue and claim ----------------------------------------------------------------------------


async def test_enqueue_then_claim_hands_out_the_job_once(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(
        QUEUE, {"n": 1, "text": "héllo"}, recording_id="rec", user_id="u", client_id="c"
    )
    pending = (await store.get_job(job_id)).job
    assert pending.state is JobState.PENDING
    assert (pending.attempts, pending.claims, pending.lost_count) == (0, 0, 0)
    assert pending.max_attempts == POLICY.max_attempts
    assert pending.run_at == pending.created_at == clock.now
    assert pending.lease_owner is None

    job = await store.claim(QUEUE, worker_id="w1")
    assert job is not None
    assert job.id == job_id
    assert job.state is JobState.PROCESSING
    assert job.payload == {"n": 1, "text": "héllo"}
    assert (job.attempts, job.claims) == (1, 1)
    assert job.lease_owner is not None
    assert job.lease_expires_at == clock.now + POLICY.lease
    assert (job.recording_id, job.user_id, job.client_id) == ("rec", "u", "c")
    assert await store.claim(QUEUE, worker_id="w2") is None
    assert (await store.get_job(job_id)).job == job


async def test_claimed_snapshot_has_float_times(store: Store) -> None:
    await store.enqueue(QUEUE, {})
    job = await claim_one(store)
    for value in (job.run_at, job.created_at, job.updated_at, job.lease_expires_at):
        assert type(value) is float


async def test_each_claim_gets_its_own_lease_token(store: Store) -> None:
    await store.enqueue(QUEUE, {})
    await store.enqueue(QUEUE, {})
    first = await claim_one(store, worker_id="same")
    second = await claim_one(store, worker_id="same")
    assert first.lease_owner != second.lease_owner


async def test_claim_only_looks_at_its_queue(store: Store) -> None:
    assert await store.claim(QUEUE, worker_id="w") is None
    other_id = await store.enqueue(OTHER, {})
    assert await store.claim(QUEUE, worker_id="w") is None
    assert (await claim_one(store, OTHER)).id == other_id


async def test_enqueue_many_adds_every_job(store: Store) -> None:
    ids = await store.enqueue_many(QUEUE, [{"i": i} for i in range(5)], priority=2, user_id="u")
    assert len(set(ids)) == 5
    jobs = await store.list_jobs(queue=QUEUE)
    assert sorted(j.id for j in jobs) == sorted(ids)
    assert {j.priority for j in jobs} == {2}
    assert {j.user_id for j in jobs} == {"u"}
    assert [j.payload["i"] for j in sorted(jobs, key=lambda j: j.id)] == list(range(5))


async def test_max_attempts_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        await store.enqueue(QUEUE, {}, max_attempts=0)
    assert await store.list_jobs() == []


# -- idempotency ----------------------------------------------------------------------------------


async def test_idempotency_key_returns_the_first_id_and_writes_one_row(store: Store) -> None:
    first = await store.enqueue(QUEUE, {"v": 1}, idempotency_key="upload-42")
    again = await store.enqueue(QUEUE, {"v": 2}, idempotency_key="upload-42")
    assert again == first
    jobs = await store.list_jobs()
    assert [j.id for j in jobs] == [first]
    assert jobs[0].payload == {"v": 1}
    assert jobs[0].idempotency_key == "upload-42"
    assert await store.enqueue(QUEUE, {"v": 3}, idempotency_key="upload-43") != first


async def test_concurrent_enqueues_with_one_key_make_one_job(store: Store) -> None:
    ids = await asyncio.gather(*(store.enqueue(QUEUE, {"i": i}, idempotency_key="k") for i in range(50)))
    assert len(set(ids)) == 1
    assert len(await store.list_jobs()) == 1


# -- ordering, delays, pausing --------------------------------------------------------------------


async def test_higher_priority_first_then_fifo(store: Store, clock: FakeClock) -> None:
    low_1 = await store.enqueue(QUEUE, {}, priority=0)
    clock.advance(1)
    high_1 = await store.enqueue(QUEUE, {}, priority=10)
    clock.advance(1)
    low_2 = await store.enqueue(QUEUE, {}, priority=0)
    clock.advance(1)
    high_2 = await store.enqueue(QUEUE, {}, priority=10)
    mid = await store.enqueue(QUEUE, {}, priority=5)
    negative = await store.enqueue(QUEUE, {}, priority=-3)
    order = [(await claim_one(store)).id for _ in range(6)]
    assert order == [high_1, high_2, mid, low_1, low_2, negative]


async def test_fifo_within_one_instant(store: Store) -> None:
    ids = [await store.enqueue(QUEUE, {"i": i}) for i in range(10)]
    assert [(await claim_one(store)).id for _ in ids] == ids


async def test_claim_many_takes_the_most_urgent_up_to_the_limit(store: Store) -> None:
    low = await store.enqueue_many(QUEUE, [{}, {}, {}])
    high = await store.enqueue(QUEUE, {}, priority=1)
    jobs = await store.claim_many(QUEUE, worker_id="w", limit=3)
    assert [j.id for j in jobs] == [high, low[0], low[1]]
    assert {j.state for j in jobs} == {JobState.PROCESSING}
    assert len({j.lease_owner for j in jobs}) == 1
    assert await store.claim_many(QUEUE, worker_id="w", limit=0) == []
    assert [j.id for j in await store.claim_many(QUEUE, worker_id="w", limit=10)] == [low[2]]


async def test_delayed_job_waits_for_its_time(store: Store, clock: FakeClock) -> None:
    delayed = await store.enqueue(QUEUE, {}, delay=10)
    run_at = (await store.get_job(delayed)).job.run_at
    assert run_at == clock.now + 10
    clock.advance(9.5)
    assert await store.claim(QUEUE, worker_id="w") is None
    clock.set(run_at)
    assert (await claim_one(store)).id == delayed


async def test_a_due_job_goes_before_a_delayed_one_of_higher_priority(store: Store, clock: FakeClock) -> None:
    await store.enqueue(QUEUE, {}, priority=9, delay=60)
    due = await store.enqueue(QUEUE, {}, priority=0)
    assert (await claim_one(store)).id == due
    assert await store.claim(QUEUE, worker_id="w") is None


async def test_negative_delay_means_now(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {}, delay=-30)
    assert (await store.get_job(job_id)).job.run_at == clock.now
    assert (await claim_one(store)).id == job_id


async def test_paused_queue_claims_nothing_until_resumed(store: Store) -> None:
    job_id = await store.enqueue(QUEUE, {})
    other_id = await store.enqueue(OTHER, {})
    await store.pause(QUEUE, "ASR maintenance")
    assert await store.paused_queues() == {QUEUE: "ASR maintenance"}
    assert await store.claim(QUEUE, worker_id="w") is None
    assert await store.claim_many(QUEUE, worker_id="w", limit=5) == []
    assert (await claim_one(store, OTHER)).id == other_id  # other queues are not paused
    assert await state_of(store, job_id) is JobState.PENDING

    await store.pause(QUEUE, "still down")  # pausing again updates the reason
    assert await store.paused_queues() == {QUEUE: "still down"}
    await store.resume(QUEUE)
    assert await store.paused_queues() == {}
    assert (await claim_one(store)).id == job_id


async def test_resume_of_a_queue_never_paused_is_harmless(store: Store) -> None:
    await store.resume(QUEUE)
    assert await store.paused_queues() == {}
    job_id = await store.enqueue(QUEUE, {})
    assert (await claim_one(store)).id == job_id


# -- heartbeat ------------------------------------------------------------------------------------


async def test_heartbeat_extends_the_lease(store: Store, clock: FakeClock) -> None:
    await store.enqueue(QUEUE, {})
    job = await claim_one(store)
    clock.advance(POLICY.lease - 5)
    await store.heartbeat(job)
    assert (await store.get_job(job.id)).job.lease_expires_at == clock.now + POLICY.lease
    clock.advance(POLICY.lease - 5)  # past the first lease, within the extended one
    report = await store.recover_expired()
    assert report.recovered == 0
    assert await state_of(store, job.id) is JobState.PROCESSING
    await store.heartbeat(job, lease=500)
    assert (await store.get_job(job.id)).job.lease_expires_at == clock.now + 500


async def test_heartbeat_many_reports_the_lost_leases(store: Store) -> None:
    await store.enqueue_many(QUEUE, [{}, {}, {}])
    a, b, c = await store.claim_many(QUEUE, worker_id="w", limit=3)
    await store.cancel(b.id)
    await store.complete(c)
    assert await store.heartbeat_many([a, b, c]) == [b.id, c.id]
    assert await store.heartbeat_many([]) == []
    with pytest.raises(LeaseLost):
        await store.heartbeat(b)


# -- complete -------------------------------------------------------------------------------------


async def test_complete_writes_outputs_and_next_jobs(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {}, recording_id="rec", user_id="u", client_id="c")
    job = await claim_one(store)
    clock.advance(3)
    next_ids = await store.complete(
        job,
        then=[
            (NEXT, {"step": 2}),
            NextJob(OTHER, {"step": 3}, priority=7, delay=4, idempotency_key="rec:other"),
        ],
        outputs=[
            Output("rec", QUEUE, 0, {"text": "hello"}),
            Output("rec", QUEUE, 1, {"text": "world"}),
        ],
    )
    assert len(next_ids) == 2

    done = (await store.get_job(job_id)).job
    assert done.state is JobState.COMPLETED
    assert done.finished_at == done.updated_at == clock.now
    assert (done.lease_owner, done.lease_expires_at) == (None, None)

    first, second = [(await store.get_job(i)).job for i in next_ids]
    assert (first.queue, first.payload, first.state, first.run_at) == (
        NEXT,
        {"step": 2},
        JobState.PENDING,
        clock.now,
    )
    assert (second.queue, second.priority, second.run_at, second.idempotency_key) == (
        OTHER,
        7,
        clock.now + 4,
        "rec:other",
    )
    for nxt in (first, second):  # the next jobs belong to the same recording, user and client
        assert (nxt.recording_id, nxt.user_id, nxt.client_id) == ("rec", "u", "c")
        assert nxt.max_attempts == POLICY.max_attempts

    outputs = await store.get_outputs("rec")
    assert [(o.stage, o.index, o.data, o.job_id, o.revision) for o in outputs] == [
        (QUEUE, 0, {"text": "hello"}, job_id, 1),
        (QUEUE, 1, {"text": "world"}, job_id, 1),
    ]
    assert outputs[0].updated_at == clock.now


async def test_complete_with_a_used_idempotency_key_reuses_the_next_job(store: Store) -> None:
    await store.enqueue_many(QUEUE, [{}, {}])
    a, b = await store.claim_many(QUEUE, worker_id="w", limit=2)
    ids_a = await store.complete(a, then=[NextJob(NEXT, {}, idempotency_key="once")])
    ids_b = await store.complete(b, then=[NextJob(NEXT, {}, idempotency_key="once")])
    assert ids_a == ids_b
    assert len(await store.list_jobs(queue=NEXT)) == 1


async def test_outputs_are_upserts(store: Store) -> None:
    await store.enqueue_many(QUEUE, [{}, {}])
    first, rerun = await store.claim_many(QUEUE, worker_id="w", limit=2)
    await store.complete(
        first, outputs=[Output("rec", "memory", 0, {"v": 1}), Output("rec", "memory", 1, {"v": 1})]
    )
    await store.complete(rerun, outputs=[Output("rec", "memory", 0, {"v": 2})])
    outputs = await store.get_outputs("rec", "memory")
    assert [(o.index, o.data, o.revision, o.job_id) for o in outputs] == [
        (0, {"v": 2}, 2, rerun.id),
        (1, {"v": 1}, 1, first.id),
    ]
    assert await store.get_outputs("rec", "transcription") == []
    assert await store.get_outputs("other-recording") == []


async def test_complete_twice_raises_lease_lost(store: Store) -> None:
    await store.enqueue(QUEUE, {})
    job = await claim_one(store)
    await store.complete(job)
    with pytest.raises(LeaseLost):
        await store.complete(job, then=[(NEXT, {})], outputs=[Output("rec", QUEUE, 0, {})])
    assert await store.list_jobs(queue=NEXT) == []
    assert await store.get_outputs("rec") == []


# -- fail -----------------------------------------------------------------------------------------


async def test_transient_failure_backs_off_with_jitter(store: Store, clock: FakeClock) -> None:
    twin = seeded_rng()  # the store's generator has the same seed, so the draw is known
    job_id = await store.enqueue(QUEUE, {})
    job = await claim_one(store)
    failed_at = clock.now
    assert await store.fail(job, "connection refused") is JobState.FAILED

    info = await store.get_job(job_id)
    delay = info.job.run_at - failed_at
    assert delay == pytest.approx(POLICY.backoff(1, twin))
    assert 0 < delay <= POLICY.backoff_bound(1)
    assert info.job.state is JobState.FAILED
    assert info.job.last_error == "connection refused"
    assert (info.job.attempts, info.job.lease_owner, info.job.finished_at) == (1, None, None)
    [attempt] = info.attempts
    assert (attempt.outcome, attempt.error, attempt.finished_at) == (
        AttemptOutcome.FAILED,
        "connection refused",
        failed_at,
    )

    clock.advance(delay / 2)
    assert await store.claim(QUEUE, worker_id="w") is None  # not before run_at
    clock.set(info.job.run_at)
    again = await claim_one(store)  # and at run_at it is
    assert (again.id, again.attempts) == (job_id, 2)


async def test_backoff_grows_exponentially_and_is_capped(open_store: StoreFactory, clock: FakeClock) -> None:
    policy = RetryPolicy(max_attempts=8, base_delay=2.0, max_delay=20.0, lease=30.0)
    store = await open_store(policies={QUEUE: policy})
    twin = seeded_rng()
    job_id = await store.enqueue(QUEUE, {})
    delays = []
    for attempt in range(1, 8):
        job = await claim_one(store)
        assert job.attempts == attempt
        assert await store.fail(job, f"try {attempt}") is JobState.FAILED
        run_at = (await store.get_job(job_id)).job.run_at
        delays.append(run_at - clock.now)
        assert delays[-1] == pytest.approx(policy.backoff(attempt, twin))
        assert 0 <= delays[-1] <= min(20.0, 2.0 * 2 ** (attempt - 1))
        clock.set(run_at)
    assert [policy.backoff_bound(a) for a in range(1, 8)] == [2, 4, 8, 16, 20, 20, 20]
    assert max(delays) > 16  # the draws reach past the uncapped bounds, and the cap holds


async def test_permanent_failure_dead_letters_at_once(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {})
    job = await claim_one(store)
    assert await store.fail(job, "undecodable audio", permanent=True) is JobState.DEAD_LETTER
    info = await store.get_job(job_id)
    assert info.job.state is JobState.DEAD_LETTER
    assert info.job.last_error == "undecodable audio"
    assert info.job.attempts == 1 < info.job.max_attempts
    assert info.job.finished_at == clock.now
    assert [(a.outcome, a.error) for a in info.attempts] == [
        (AttemptOutcome.DEAD_LETTER, "undecodable audio")
    ]
    clock.advance(86_400)
    assert await store.claim(QUEUE, worker_id="w") is None


async def test_exhausted_attempts_dead_letter_with_the_reason(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {}, max_attempts=2)
    assert await store.fail(await claim_one(store), "timeout") is JobState.FAILED
    clock.advance(POLICY.max_delay)
    assert await store.fail(await claim_one(store), "timeout again") is JobState.DEAD_LETTER
    info = await store.get_job(job_id)
    assert info.job.state is JobState.DEAD_LETTER
    assert info.job.attempts == 2
    assert info.job.last_error is not None
    assert "timeout again" in info.job.last_error
    assert "attempts exhausted: 2 of 2" in info.job.last_error
    assert [a.outcome for a in info.attempts] == [AttemptOutcome.FAILED, AttemptOutcome.DEAD_LETTER]
    clock.advance(86_400)
    assert await store.claim(QUEUE, worker_id="w") is None


# -- defer and release ----------------------------------------------------------------------------


async def test_defer_refunds_the_attempt(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {})
    job = await claim_one(store)
    assert job.attempts == 1
    await store.defer(job, seconds=7, reason="breaker asr is open")
    info = await store.get_job(job_id)
    assert info.job.state is JobState.PENDING
    assert (info.job.attempts, info.job.claims) == (0, 1)
    assert info.job.run_at == clock.now + 7
    assert (info.job.lease_owner, info.job.lease_expires_at) == (None, None)
    assert [(a.outcome, a.error) for a in info.attempts] == [(AttemptOutcome.DEFERRED, "breaker asr is open")]
    clock.advance(6)
    assert await store.claim(QUEUE, worker_id="w") is None
    clock.advance(1)
    again = await claim_one(store)
    assert (again.attempts, again.claims) == (1, 2)


async def test_an_outage_spends_no_attempts(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {}, max_attempts=1)
    for _ in range(10):
        await store.defer(await claim_one(store), seconds=60)
        clock.advance(60)
    job = (await store.get_job(job_id)).job
    assert (job.state, job.attempts, job.claims) == (JobState.PENDING, 0, 10)


async def test_release_hands_the_job_back_claimable_at_once(store: Store) -> None:
    job_id = await store.enqueue(QUEUE, {})
    job = await claim_one(store)
    await store.release(job)
    info = await store.get_job(job_id)
    assert (info.job.state, info.job.attempts) == (JobState.PENDING, 0)
    assert info.attempts[-1].outcome is AttemptOutcome.RELEASED
    assert (await claim_one(store)).id == job_id


# -- the audit trail ------------------------------------------------------------------------------


async def test_one_attempt_row_per_claim(store: Store, clock: FakeClock) -> None:
    job_id = await store.enqueue(QUEUE, {})
    t1 = clock.now
    job = await claim_one(store, worker_id="w1")
    clock.advance(1.5)
    await store.fail(job, "e1")
    clock.advance(POLICY.max_delay)
    t2 = clock.now
    job = await claim_one(store, worker_id="w2")
    clock.advance(2)
    await store.defer(job, seconds=0, reason="llm down")
    t3 = clock.advance(1)
    job = await claim_one(store, worker_id="w3")
    running = await store.get_job(job_id)
    assert running.attempts[-1].outcome is AttemptOutcome.RUNNING
    assert running.attempts[-1].finished_at is None
    assert running.attempts[-1].duration is None
    clock.advance(4)
    await store.complete(job)

    info = await store.get_job(job_id)
    rows = [(a.claim, a.worker_id, a.started_at, a.finished_at, a.outcome, a.error) for a in info.attempts]
    assert rows == [
        (1, "w1", t1, t1 + 1.5, AttemptOutcome.FAILED, "e1"),
        (2, "w2", t2, t2 + 2, AttemptOutcome.DEFERRED, "llm down"),
        (3, "w3", t3, t3 + 4, AttemptOutcome.COMPLETED, None),
    ]
    assert [a.duration for a in info.attempts] == [1.5, 2.0, 4.0]
    assert {a.job_id for a in info.attempts} == {job_id}
    assert (info.job.attempts, info.job.claims) == (2, 3)


# -- reading --------------------------------------------------------------------------------------


async def test_get_job_of_an_unknown_id_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.get_job(12345)


async def test_list_jobs_filters_newest_first(store: Store) -> None:
    a = await store.enqueue(QUEUE, {}, recording_id="r1", user_id="u1")
    b = await store.enqueue(OTHER, {}, recording_id="r1", user_id="u2")
    c = await store.enqueue(QUEUE, {}, recording_id="r2", user_id="u1")
    await store.complete(await claim_one(store))  # completes a
    assert [j.id for j in await store.list_jobs()] == [c, b, a]
    assert [j.id for j in await store.list_jobs(queue=QUEUE)] == [c, a]
    assert [j.id for j in await store.list_jobs(state=JobState.COMPLETED)] == [a]
    assert [j.id for j in await store.list_jobs(recording_id="r1")] == [b, a]
    assert [j.id for j in await store.list_jobs(user_id="u1", queue=QUEUE)] == [c, a]
    assert [j.id for j in await store.list_jobs(limit=1, offset=1)] == [b]


async def test_a_closed_store_raises_instead_of_answering_empty(store: Store) -> None:
    await store.enqueue(QUEUE, {})
    await store.close()
    with pytest.raises(StoreError):
        await store.enqueue(QUEUE, {})
    with pytest.raises(StoreError):
        await store.claim(QUEUE, worker_id="w")
    with pytest.raises(StoreError):
        await store.list_jobs()


async def test_cancel_of_an_unknown_job_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.cancel(999)
    with pytest.raises(NotFound):
        await store.requeue(999)


async def test_requeue_of_a_completed_job_raises_invalid_transition(store: Store) -> None:
    job_id = await store.enqueue(QUEUE, {})
    await store.complete(await claim_one(store))
    with pytest.raises(InvalidTransition):
        await store.requeue(job_id)
    assert await state_of(store, job_id) is JobState.COMPLETED


async def test_wait_for_jobs_wakes_on_a_commit(store: Store) -> None:
    await store.wait_for_jobs([QUEUE], 0)  # nothing arrived: returns at the timeout
    waiter = asyncio.ensure_future(store.wait_for_jobs([QUEUE], 30))
    await asyncio.sleep(0)
    assert not waiter.done()
    await store.enqueue(QUEUE, {})
    await asyncio.wait_for(waiter, 5)  # woken by the commit, long before its own timeout

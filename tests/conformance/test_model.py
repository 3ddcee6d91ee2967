"""A model-based test: random sequences of operations against a small in-Python model.

Each example opens a fresh store in its own temporary directory and drives it from synchronous
rules through one event loop per example. After every step the store must agree with the model
on every job (state, attempts, claims, losses, run_at, lease) and the invariants must hold.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conformance.backends import BACKENDS, POLICY, QUEUE, forget_backend, open_backend, require_backend
from fakes import FakeClock
from lifeline import AttemptOutcome, InvalidTransition, Job, JobState, LeaseLost, NotFound, Store
from lifeline.domain import CLAIMABLE_STATES
from lifeline.queue.logic import recording_status

T = TypeVar("T")

RECORDING = "model-recording"


@dataclass
class ModelJob:
    id: int
    priority: int
    max_attempts: int
    run_at: float
    state: JobState = JobState.PENDING
    attempts: int = 0
    claims: int = 0
    lost: int = 0
    owner: str | None = None
    lease_expires_at: float | None = None

    def held_by(self, snapshot: Job) -> bool:
        return self.state is JobState.PROCESSING and self.owner == snapshot.lease_owner

    def let_go(self, state: JobState) -> None:
        self.state = state
        self.owner = None
        self.lease_expires_at = None


class StoreModel(RuleBasedStateMachine):
    backend = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="lifeline-model-")
        self.clock = FakeClock()
        self.runner = asyncio.Runner()
        self.store: Store = self.run(
            open_backend(
                self.backend,
                Path(self.tmp.name),
                clock=self.clock,
                rng=random.Random(7),
                synchronous="normal",  # durability is tested elsewhere; this test wants speed
            )
        )
        self.run(self.store.add_recording(RECORDING))
        self.jobs: dict[int, ModelJob] = {}
        self.snapshots: list[Job] = []  # every claim ever handed out, current and stale
        self.paused = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.runner.close()
            forget_backend(self.backend, Path(self.tmp.name))
            self.tmp.cleanup()

    # -- helpers --------------------------------------------------------------------------------
    def expected_claim(self) -> ModelJob | None:
        if self.paused:
            return None
        ready = [j for j in self.jobs.values() if j.state in CLAIMABLE_STATES and j.run_at <= self.clock.now]
        return min(ready, key=lambda j: (-j.priority, j.run_at, j.id), default=None)

    def snapshot(self, index: int) -> Job:
        return self.snapshots[index % len(self.snapshots)]

    def job_id(self, index: int) -> int:
        if index % 10 == 9:
            return 10_000 + index  # now and then an id that does not exist
        ids = sorted(self.jobs)
        return ids[index % len(ids)]

    def stored(self, job_id: int) -> Job:
        return self.run(self.store.get_job(job_id)).job

    def check_backoff(self, model: ModelJob) -> None:
        """A job that waits out a backoff: record the drawn run_at after checking its bound."""
        run_at = self.stored(model.id).run_at
        assert self.clock.now <= run_at <= self.clock.now + POLICY.backoff_bound(model.attempts)
        model.run_at = run_at

    # -- rules ----------------------------------------------------------------------------------
    @rule(
        priority=st.integers(-1, 2),
        delay=st.sampled_from([0.0, 0.0, 5.0]),
        max_attempts=st.integers(1, 3),
    )
    def enqueue(self, priority: int, delay: float, max_attempts: int) -> None:
        job_id = self.run(
            self.store.enqueue(
                QUEUE, {}, priority=priority, delay=delay, max_attempts=max_attempts, recording_id=RECORDING
            )
        )
        assert job_id not in self.jobs
        self.jobs[job_id] = ModelJob(job_id, priority, max_attempts, self.clock.now + delay)

    @rule()
    def claim(self) -> None:
        expected = self.expected_claim()
        job = self.run(self.store.claim(QUEUE, worker_id="w"))
        if expected is None:
            assert job is None
            return
        assert job is not None
        assert job.id == expected.id
        expected.state = JobState.PROCESSING
        expected.attempts += 1
        expected.claims += 1
        expected.owner = job.lease_owner
        expected.lease_expires_at = self.clock.now + POLICY.lease
        self.snapshots.append(job)

    @precondition(lambda self: self.snapshots)
    @rule(index=st.integers(0, 50))
    def complete(self, index: int) -> None:
        held = self.snapshot(index)
        model = self.jobs[held.id]
        if model.held_by(held):
            assert self.run(self.store.complete(held)) == []
            model.let_go(JobState.COMPLETED)
        else:
            with pytest.raises(LeaseLost):
                self.run(self.store.complete(held))

    @precondition(lambda self: self.snapshots)
    @rule(index=st.integers(0, 50), permanent=st.booleans())
    def fail(self, index: int, permanent: bool) -> None:
        held = self.snapshot(index)
        model = self.jobs[held.id]
        if not model.held_by(held):
            with pytest.raises(LeaseLost):
                self.run(self.store.fail(held, "boom", permanent=permanent))
            return
        state = self.run(self.store.fail(held, "boom", permanent=permanent))
        if permanent or model.attempts >= model.max_attempts:
            assert state is JobState.DEAD_LETTER
            model.let_go(JobState.DEAD_LETTER)
        else:
            assert state is JobState.FAILED
            model.let_go(JobState.FAILED)
            self.check_backoff(model)

    @precondition(lambda self: self.snapshots)
    @rule(index=st.integers(0, 50), seconds=st.sampled_from([0.0, 3.0]), release=st.booleans())
    def give_back(self, index: int, seconds: float, release: bool) -> None:
        held = self.snapshot(index)
        model = self.jobs[held.id]
        call = self.store.release(held) if release else self.store.defer(held, seconds=seconds)
        if not model.held_by(held):
            with pytest.raises(LeaseLost):
                self.run(call)
            return
        self.run(call)
        model.let_go(JobState.PENDING)
        model.attempts -= 1
        model.run_at = self.clock.now + (0.0 if release else seconds)

    @precondition(lambda self: self.snapshots)
    @rule(index=st.integers(0, 50))
    def heartbeat(self, index: int) -> None:
        held = self.snapshot(index)
        model = self.jobs[held.id]
        if model.held_by(held):
            self.run(self.store.heartbeat(held))
            model.lease_expires_at = self.clock.now + POLICY.lease
        else:
            with pytest.raises(LeaseLost):
                self.run(self.store.heartbeat(held))

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 50))
    def cancel(self, index: int) -> None:
        job_id = self.job_id(index)
        model = self.jobs.get(job_id)
        if model is None:
            with pytest.raises(NotFound):
                self.run(self.store.cancel(job_id))
        elif model.state in (JobState.PENDING, JobState.FAILED, JobState.RETRY, JobState.PROCESSING):
            self.run(self.store.cancel(job_id))
            model.let_go(JobState.CANCELLED)
        else:
            with pytest.raises(InvalidTransition):
                self.run(self.store.cancel(job_id))

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 50), max_attempts=st.none() | st.integers(1, 3))
    def requeue(self, index: int, max_attempts: int | None) -> None:
        job_id = self.job_id(index)
        model = self.jobs.get(job_id)
        if model is None:
            with pytest.raises(NotFound):
                self.run(self.store.requeue(job_id, max_attempts=max_attempts))
        elif model.state in (JobState.FAILED, JobState.RETRY, JobState.DEAD_LETTER, JobState.CANCELLED):
            self.run(self.store.requeue(job_id, max_attempts=max_attempts))
            model.let_go(JobState.PENDING)
            model.attempts = model.lost = 0
            model.run_at = self.clock.now
            if max_attempts is not None:
                model.max_attempts = max_attempts
        else:
            with pytest.raises(InvalidTransition):
                self.run(self.store.requeue(job_id, max_attempts=max_attempts))

    @rule()
    def recover(self) -> None:
        self._recover(
            [
                j
                for j in self.jobs.values()
                if j.state is JobState.PROCESSING
                and j.lease_expires_at is not None
                and j.lease_expires_at <= self.clock.now
            ],
            None,
        )

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 50))
    def recover_one_by_force(self, index: int) -> None:
        job_id = self.job_id(index)
        model = self.jobs.get(job_id)
        self._recover([model] if model is not None and model.state is JobState.PROCESSING else [], job_id)

    def _recover(self, lost: list[ModelJob], job_id: int | None) -> None:
        report = self.run(self.store.recover_expired(job_id=job_id, force=job_id is not None))
        requeued, escalated = [], []
        for model in lost:
            model.lost += 1
            if model.attempts >= model.max_attempts:
                model.let_go(JobState.DEAD_LETTER)
                escalated.append(model.id)
            else:
                model.let_go(JobState.RETRY)
                self.check_backoff(model)
                requeued.append(model.id)
        assert report.found == len(lost)
        assert sorted(report.requeued) == sorted(requeued)
        assert sorted(report.escalated) == sorted(escalated)

    @rule(seconds=st.sampled_from([1.0, 4.0, 10.0, 31.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(paused=st.booleans())
    def pause_or_resume(self, paused: bool) -> None:
        self.run(self.store.pause(QUEUE, "model") if paused else self.store.resume(QUEUE))
        self.paused = paused

    # -- invariants -----------------------------------------------------------------------------
    @invariant()
    def store_matches_model(self) -> None:
        # every job belongs to one recording, so one tracker read returns all jobs and attempts
        report = self.run(self.store.recording_status(RECORDING))
        infos = {info.job.id: info for stage in report.stages.values() for info in stage.jobs}
        assert set(infos) == set(self.jobs)
        assert report.status is recording_status([m.state for m in self.jobs.values()])
        for job_id, model in self.jobs.items():
            job, attempts = infos[job_id].job, infos[job_id].attempts
            assert job.state is model.state, (job_id, job.state, model.state)
            assert (job.attempts, job.claims, job.lost_count, job.max_attempts) == (
                model.attempts,
                model.claims,
                model.lost,
                model.max_attempts,
            )
            assert job.run_at == model.run_at
            assert (job.lease_owner, job.lease_expires_at) == (model.owner, model.lease_expires_at)
            # invariants that hold whatever the model says
            assert 0 <= job.attempts <= job.max_attempts
            assert job.claims >= job.attempts
            assert (job.state is JobState.PROCESSING) == (job.lease_owner is not None)
            assert (job.finished_at is not None) == (
                job.state in (JobState.COMPLETED, JobState.DEAD_LETTER, JobState.CANCELLED)
            )
            # the audit trail: one row per claim, and only the current claim may be running
            assert [a.claim for a in attempts] == list(range(1, model.claims + 1))
            running = [a.claim for a in attempts if a.outcome is AttemptOutcome.RUNNING]
            assert running == ([model.claims] if model.state is JobState.PROCESSING else [])
            assert all((a.finished_at is None) == (a.claim in running) for a in attempts)

    @invariant()
    def stats_match_model(self) -> None:
        counts = self.run(self.store.queue_stats())[QUEUE].counts
        expected = dict.fromkeys(JobState, 0)
        for model in self.jobs.values():
            expected[model.state] += 1
        assert counts == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_agrees_with_the_model(backend: str) -> None:
    require_backend(backend)
    machine = type(f"StoreModel_{backend}", (StoreModel,), {"backend": backend})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

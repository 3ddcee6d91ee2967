"""Rules about a conversation (a recording and its stages) that the API and the CLI share.

- :func:`conversation_status`: the one word a conversation's status is shown as.
- :func:`stage_states`: the state of each stage's newest job.
- :func:`queue_reprocess`: re-run a stage, refusing (:class:`Conflict`, HTTP 409) while it is
  queued or running or before what it needs exists; two callers at once queue one job.
"""

from __future__ import annotations

from typing import Final

from lifeline.domain import CLAIMABLE_STATES, Conflict, JobState, Stage
from lifeline.store.base import RecordingReport, RecordingRow, Store

# the stages a reprocess may start from, and the stage whose output each one needs
REPROCESS_REQUIRES: Final[dict[str, str | None]] = {
    Stage.TRANSCRIPTION.value: None,
    Stage.MEMORY.value: Stage.TRANSCRIPTION.value,
    Stage.ACTION_ITEM.value: Stage.TRANSCRIPTION.value,
}
_ACTIVE: Final = (*CLAIMABLE_STATES, JobState.PROCESSING)


def conversation_status(row: RecordingRow, report: RecordingReport) -> str:
    """The report's status once the recording has a job; before that ``open`` for a stream
    still receiving audio, ``pending`` otherwise."""
    if any(stage.jobs for stage in report.stages.values()):
        return report.status.value
    return "open" if row.source == "stream" else "pending"


def stage_states(report: RecordingReport) -> dict[str, JobState | None]:
    """The state of each stage's newest job, for every stage of the pipeline (``None``: no job)."""
    states: dict[str, JobState | None] = {}
    for stage in Stage:
        found = report.stages.get(stage.value)
        states[stage.value] = found.state if found is not None else None
    return states


def reprocess_key(audio_uuid: str, stage: str, newest_job_id: int) -> str:
    """The idempotency key of a reprocess: the recording, the stage and the stage's newest job
    before it (0: none).

    Two requests at once (a double click) may both find the stage idle; both compute this key and
    the store returns the first job for a key already used, so they queue one job. The newest job
    is the right generation because ids only grow: while the job queued under a key exists, it is
    the stage's newest job or older than the newest, so nobody computes that key again (a count
    of finished jobs would go back down when retention deletes old jobs); once it is deleted, its
    key is free again."""
    return f"reprocess:{audio_uuid}:{stage}:{newest_job_id}"


async def queue_reprocess(store: Store, row: RecordingRow, stage: str) -> int:
    """Queue a job that re-runs ``stage`` of ``row`` (keeping the earlier stages' outputs); its id.

    :class:`Conflict` while the stage is queued or running, when transcription is asked of a
    recording without audio or not assembled yet, or memory/action_item of one without a
    transcript; :class:`ValueError` for a stage that cannot be re-run; :class:`NotFound` if the
    recording is gone.
    """
    if stage not in REPROCESS_REQUIRES:
        raise ValueError(f"{stage!r} cannot be re-run (one of {', '.join(REPROCESS_REQUIRES)})")
    audio_uuid = row.audio_uuid
    report = await store.recording_status(audio_uuid)
    stage_report = report.stages.get(stage)
    newest = max((info.job.id for info in stage_report.jobs), default=0) if stage_report else 0
    if stage_report is not None and stage_report.state in _ACTIVE:
        raise Conflict(f"{stage} of {audio_uuid} is already queued or running")
    needs = REPROCESS_REQUIRES[stage]
    if needs is None:
        if row.audio_bytes <= 0:
            raise Conflict(f"{audio_uuid} has no audio to transcribe")
        chunk = report.stages.get(Stage.CHUNK.value)
        if chunk is None or chunk.state != JobState.COMPLETED:
            raise Conflict(f"{audio_uuid} has not been assembled yet")
    elif not await store.get_outputs(audio_uuid, needs):
        raise Conflict(f"{audio_uuid} has no {needs} yet")
    return await store.enqueue(
        stage,
        {},
        recording_id=audio_uuid,
        user_id=row.user_id,
        client_id=row.client_id,
        idempotency_key=reprocess_key(audio_uuid, stage, newest),
    )

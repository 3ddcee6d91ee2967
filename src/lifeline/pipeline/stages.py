"""The four stage handlers: chunk -> transcription -> (memory, action_item).

Each handler reads what it needs from the store by the job's ``recording_id`` (job payloads are
``{}``), calls its provider under that service's breaker, and returns a :class:`JobResult`: its
outputs, the pairs those outputs replace as a whole, and the next stages' jobs. The worker writes
all of it in the transaction that completes the job, so a hand-over is atomic and a re-run (after
a crash, or a reprocess) replaces a stage's outputs instead of adding to them.

Outputs (the contract the API and the dashboard read; keyed by recording, stage and index):

- ``chunk`` 0: ``{"duration_seconds", "bytes", "chunks", "speech"}``
- ``transcription`` 0: ``{"text", "segments": [{"start", "end", "text"}], "duration_seconds",
  "provider"}``
- ``memory`` i: ``{"text", "category", "point_id"}`` (``point_id`` is the Qdrant point, or None)
- ``action_item`` i: ``{"text", "assignee", "due", "status", "at_seconds"}``

Breakers guard remote services only. The embedded providers (faster-whisper, the rule-based
extractor, MiniLM) run in this process: there is no service to protect, and a long recording
transcribed locally must not count as a "slow call" that opens the ``asr`` breaker.

Silence: a recording whose audio is silent throughout completes its ``chunk`` job with
``speech: false`` and hands nothing over: there is nothing to transcribe, and the recording is
``completed`` with no transcript.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from lifeline.audio import is_silent
from lifeline.breakers import CircuitBreakers
from lifeline.config import Settings
from lifeline.domain import (
    JSON,
    Job,
    JobCancelled,
    JobState,
    NextJob,
    NotFound,
    Output,
    PermanentError,
    Stage,
)
from lifeline.providers.asr import Segment, transcript_text
from lifeline.providers.factory import Providers, build_providers
from lifeline.providers.llm import ActionItem, Memory
from lifeline.providers.vectors import VectorPoint, point_id
from lifeline.queue.worker import Handler, JobResult
from lifeline.store.base import RecordingRow, Store, StoredOutput

log = logging.getLogger(__name__)

BYTES_PER_SECOND = 32_000  # 16 kHz mono s16le
AUDIO_PAGE = 64  # chunks read from the store at a time
SILENCE_DBFS = -50.0  # no 100 ms window louder than this: silence


@dataclass(frozen=True, slots=True)
class Transcript:
    """The ``transcription`` output of a recording, validated."""

    text: str
    segments: list[Segment]
    duration_seconds: float


def memory_point_id(audio_uuid: str, index: int) -> str:
    """The Qdrant point id of memory ``index`` of ``audio_uuid`` (deterministic: a re-run
    overwrites the same point). It is the vector store's own :func:`point_id`, so the id kept in
    the output is the id the point has in Qdrant."""
    return point_id(audio_uuid, index)


def _recording_id(job: Job) -> str:
    if not job.recording_id:
        raise PermanentError(f"job {job.id} of {job.queue} has no recording_id: nothing to work on")
    return job.recording_id


class Pipeline:
    """The stage handlers over one store, one set of breakers and one set of providers.

    ``providers`` defaults to :func:`build_providers` of the settings; building is cheap (models
    load on first use). Providers passed in belong to the caller; built ones are closed by
    :meth:`aclose`.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        breakers: CircuitBreakers,
        providers: Providers | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.breakers = breakers
        self._owns_providers = providers is None
        self.providers = providers if providers is not None else build_providers(settings.providers())

    def handlers(self) -> dict[str, Handler]:
        return {
            Stage.CHUNK.value: self.chunk,
            Stage.TRANSCRIPTION.value: self.transcription,
            Stage.MEMORY.value: self.memory,
            Stage.ACTION_ITEM.value: self.action_item,
        }

    async def aclose(self) -> None:
        if self._owns_providers:
            await self.providers.aclose()

    # -- calls to services ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _guarded(self, service: str, provider: object) -> AsyncIterator[None]:
        """Run the block under ``service``'s breaker, unless ``provider`` is embedded."""
        if getattr(provider, "name", None) == "embedded":
            yield
            return
        async with self.breakers.call(service):
            yield

    # -- reading the store ----------------------------------------------------------------------
    async def _pages(self, audio_uuid: str) -> AsyncIterator[list[tuple[int, bytes]]]:
        after = -1
        while True:
            page = await self.store.read_audio(audio_uuid, after_seq=after, limit=AUDIO_PAGE)
            if not page:
                return
            yield page
            after = page[-1][0]

    async def _recording(self, audio_uuid: str) -> RecordingRow:
        """The job's recording; :class:`JobCancelled` when it is gone.

        Deleting a recording deletes its jobs, so only a job queued after the deletion gets here
        (a stream closed, or a reprocess asked for, at the moment its recording was deleted):
        there is nothing left to do, and nothing anybody should have to look at.
        """
        try:
            return await self.store.get_recording(audio_uuid)
        except NotFound:
            raise JobCancelled(f"recording {audio_uuid} was deleted") from None

    async def _transcript(self, audio_uuid: str) -> Transcript:
        await self._recording(audio_uuid)
        outputs = await self.store.get_outputs(audio_uuid, Stage.TRANSCRIPTION.value)
        found = next((o for o in outputs if o.index == 0), None)
        if found is None:
            raise PermanentError(
                f"recording {audio_uuid} has no transcript: its transcription stage has not stored one"
            )
        return parse_transcript(audio_uuid, found.data)

    # -- chunk ------------------------------------------------------------------------------------
    async def chunk(self, job: Job) -> JobResult:
        """Close the conversation: check its audio is there and has speech, hand it to transcription."""
        audio_uuid = _recording_id(job)
        recording = await self._recording(audio_uuid)
        if recording.audio_bytes <= 0:
            raise PermanentError("the recording has no audio")
        speech = False
        async for page in self._pages(audio_uuid):
            if any(not is_silent(pcm, SILENCE_DBFS) for _, pcm in page):
                speech = True
                break
        summary: JSON = {
            "duration_seconds": round(recording.audio_bytes / BYTES_PER_SECOND, 3),
            "bytes": recording.audio_bytes,
            "chunks": recording.audio_chunks,
            "speech": speech,
        }
        return JobResult(
            outputs=[Output(audio_uuid, Stage.CHUNK.value, 0, summary)],
            replace=[(audio_uuid, Stage.CHUNK.value)],
            then=[NextJob(Stage.TRANSCRIPTION.value, {})] if speech else [],
        )

    # -- transcription ----------------------------------------------------------------------------
    async def transcription(self, job: Job) -> JobResult:
        """Speech to text; hands over to memory and action_item in the same transaction."""
        audio_uuid = _recording_id(job)
        await self._recording(audio_uuid)
        buffer = bytearray()
        async for page in self._pages(audio_uuid):
            for _, pcm in page:
                buffer += pcm
        if not buffer:
            raise PermanentError("the recording has no audio")
        if len(buffer) % 2:
            del buffer[-1]  # a torn last sample: the transcribers take whole samples only
        duration = round(len(buffer) / BYTES_PER_SECOND, 3)
        pcm16k = bytes(buffer)
        del buffer
        transcriber = self.providers.transcriber
        async with self._guarded("asr", transcriber):
            segments = await transcriber.transcribe(pcm16k)
        del pcm16k
        data: JSON = {
            "text": transcript_text(segments),
            "segments": [s.to_dict() for s in segments],
            "duration_seconds": duration,
            "provider": transcriber.name,
        }
        return JobResult(
            outputs=[Output(audio_uuid, Stage.TRANSCRIPTION.value, 0, data)],
            replace=[(audio_uuid, Stage.TRANSCRIPTION.value)],
            then=[NextJob(Stage.MEMORY.value, {}), NextJob(Stage.ACTION_ITEM.value, {})],
        )

    # -- memory -----------------------------------------------------------------------------------
    async def memory(self, job: Job) -> JobResult:
        """Durable facts from the transcript; kept in the store and, when configured, in Qdrant."""
        audio_uuid = _recording_id(job)
        transcript = await self._transcript(audio_uuid)
        extractor = self.providers.extractor
        async with self._guarded("llm", extractor):
            memories = await extractor.memories(transcript.text)
        point_ids: list[str | None] = [None] * len(memories)
        if self.providers.vectors is not None:
            previous = await self.store.get_outputs(audio_uuid, Stage.MEMORY.value)
            point_ids = list(await self._index(job, audio_uuid, memories, previous))
        outputs = [
            Output(audio_uuid, Stage.MEMORY.value, i, memory_data(m, point_ids[i]))
            for i, m in enumerate(memories)
        ]
        return JobResult(outputs=outputs, replace=[(audio_uuid, Stage.MEMORY.value)])

    async def _index(
        self, job: Job, audio_uuid: str, memories: Sequence[Memory], previous: Sequence[StoredOutput]
    ) -> list[str]:
        """Embed and upsert the memories as points ``0..n-1`` of the recording, and delete the
        points an earlier run left that this one does not rewrite (it found fewer memories).

        Every call is idempotent: a crash anywhere here is repaired by the job's next claim.
        """
        vectors, embedder = self.providers.vectors, self.providers.embedder
        assert vectors is not None
        # An earlier claim of this job (claims > 1: it crashed, or lost its lease) may have upserted
        # points and died before its outputs were committed. Nothing records how many it wrote (a
        # model may find more memories on one run than on the next), so their ids are unknown and
        # only the delete by recording removes them; it runs first, before this run's upsert.
        unknown_points = job.claims > 1 or await self._earlier_run_unfinished(job, audio_uuid)
        if unknown_points:
            async with self.breakers.call("vectors"):
                await vectors.delete_recording(audio_uuid)
        ids: list[str] = []
        if memories:
            if embedder is None:
                raise PermanentError("a vector store is configured but no embedder")
            async with self._guarded("vectors", embedder):
                embeddings = await embedder.embed([m.text for m in memories])
            points = [
                VectorPoint(
                    recording_id=audio_uuid,
                    index=i,
                    user_id=job.user_id or "",
                    vector=embeddings[i],
                    text=m.text,
                    payload={"audio_uuid": audio_uuid, "category": m.category.value},
                )
                for i, m in enumerate(memories)
            ]
            async with self.breakers.call("vectors"):
                await vectors.upsert(points)
            ids = [p.id for p in points]
            await self._unless_deleted(audio_uuid)
        if not unknown_points:
            # The committed run's points are known from its outputs: those this run did not
            # overwrite go by id, after the upsert, so a search never finds the recording without
            # its points in between.
            stale = sorted({point_id(audio_uuid, o.index) for o in previous if o.index >= len(memories)})
            if stale:
                async with self.breakers.call("vectors"):
                    await vectors.delete_points(stale)
        return ids

    async def _earlier_run_unfinished(self, job: Job, audio_uuid: str) -> bool:
        """Whether another memory job of the recording was claimed and never completed (it was
        dead-lettered or cancelled after a claim): like an earlier claim of this job, it may have
        upserted points that no committed output records."""
        report = await self.store.recording_status(audio_uuid)
        stage = report.stages.get(Stage.MEMORY.value)
        return stage is not None and any(
            info.job.id != job.id and info.job.claims > 0 and info.job.state is not JobState.COMPLETED
            for info in stage.jobs
        )

    async def _unless_deleted(self, audio_uuid: str) -> None:
        """After an upsert: if the recording was deleted meanwhile, take its points back out.

        :meth:`delete_recording` removes the points before and after the store rows; an upsert
        that lands after both finds the recording gone here. Together the two leave no point of a
        deleted recording in Qdrant, whatever the interleaving.
        """
        try:
            await self.store.get_recording(audio_uuid)
        except NotFound:
            vectors = self.providers.vectors
            assert vectors is not None
            async with self.breakers.call("vectors"):
                await vectors.delete_recording(audio_uuid)
            raise JobCancelled(
                f"recording {audio_uuid} was deleted while its memories were indexed"
            ) from None

    # -- action items -----------------------------------------------------------------------------
    async def action_item(self, job: Job) -> JobResult:
        """Tasks said in the recording, with who, by when and where in the recording."""
        audio_uuid = _recording_id(job)
        transcript = await self._transcript(audio_uuid)
        extractor = self.providers.extractor
        async with self._guarded("llm", extractor):
            items = await extractor.action_items(transcript.segments)
        outputs = [
            Output(audio_uuid, Stage.ACTION_ITEM.value, i, action_item_data(item))
            for i, item in enumerate(items)
        ]
        return JobResult(outputs=outputs, replace=[(audio_uuid, Stage.ACTION_ITEM.value)])

    # -- deletions (for the API) --------------------------------------------------------------------
    async def delete_recording(self, audio_uuid: str) -> None:
        """The recording and everything derived from it: its Qdrant points (when a vector store is
        configured), then its audio, outputs and jobs. :class:`NotFound` for an unknown one.

        Points go first: if the store deletion then fails, a retry finds the recording and
        deletes again; the other order could leave points no recording refers to. They go once
        more after the store rows: a memory job that was indexing meanwhile may have upserted
        between the two deletions (one that upserts later sees the recording gone and removes its
        points itself, see :meth:`_unless_deleted`).
        """
        await self.store.get_recording(audio_uuid)  # NotFound before touching Qdrant
        vectors = self.providers.vectors
        if vectors is not None:
            async with self.breakers.call("vectors"):
                await vectors.delete_recording(audio_uuid)
        await self.store.delete_recording(audio_uuid)
        if vectors is not None:
            try:
                async with self.breakers.call("vectors"):
                    await vectors.delete_recording(audio_uuid)
            except Exception as exc:  # the recording is gone; only a racing upsert's points could remain
                log.warning(
                    "recording %s deleted, but its points could not be checked again: %s", audio_uuid, exc
                )

    async def delete_memory(self, audio_uuid: str, index: int) -> None:
        """One memory: its Qdrant point (by id), then its output. :class:`NotFound` if there is none.

        The point goes first: if the store deletion then fails, a retry finds the output and
        deletes the (already gone) point again; the other order could leave a point no memory
        refers to.
        """
        await self.store.get_output(audio_uuid, Stage.MEMORY.value, index)  # NotFound first
        vectors = self.providers.vectors
        if vectors is not None:
            async with self.breakers.call("vectors"):
                await vectors.delete_points([memory_point_id(audio_uuid, index)])
        await self.store.delete_output(audio_uuid, Stage.MEMORY.value, index)


# -- the output shapes ------------------------------------------------------------------------------


def memory_data(memory: Memory, point: str | None) -> JSON:
    return {"text": memory.text, "category": memory.category.value, "point_id": point}


def action_item_data(item: ActionItem) -> JSON:
    data = item.to_dict()
    return {key: data[key] for key in ("text", "assignee", "due", "status", "at_seconds")}


def parse_transcript(audio_uuid: str, data: JSON) -> Transcript:
    """The stored transcript, checked: :class:`PermanentError` with the reason if malformed."""
    try:
        text = data["text"]
        raw_segments: Any = data["segments"]
        if not isinstance(text, str) or not isinstance(raw_segments, list):
            raise TypeError("text must be a string and segments a list")
        segments = [Segment.from_dict(s) for s in raw_segments]
        duration = float(data.get("duration_seconds", 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentError(
            f"the transcript of recording {audio_uuid} is malformed ({type(exc).__name__}: {exc})"
        ) from exc
    return Transcript(text=text, segments=segments, duration_seconds=duration)

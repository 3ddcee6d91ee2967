"""``/metrics``: the recordings in the store (by source, still open, seconds of audio), read from
the store at each scrape, so what another process wrote counts too."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lifeline.domain import NextJob

from .conftest import Api


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` by (name, sorted labels)."""
    r = await api.client.get("/metrics")
    assert r.status_code == 200, r.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }


def recordings(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    return {
        dict(labels)["source"]: value
        for (name, labels), value in samples.items()
        if name == "lifeline_recordings"
    }


async def test_recording_metrics_follow_the_store(api: Api) -> None:
    store = api.ctx.store
    empty = await scrape(api)
    assert recordings(empty) == {"upload": 0.0, "stream": 0.0, "api": 0.0}
    assert empty[("lifeline_recordings_open", ())] == 0.0
    assert empty[("lifeline_audio_stored_seconds", ())] == 0.0

    # an upload (2 s of audio) handed over with its first job
    await store.add_recording("up", user_id="u1", source="upload")
    await store.append_audio("up", 0, bytes(64_000))
    await store.enqueue("chunk", {}, recording_id="up", user_id="u1")
    # a live stream (0.5 s so far), a stream cut off before any audio, and one made by code
    await store.add_recording("live", user_id="u2", source="stream")
    await store.append_audio("live", 0, bytes(16_000))
    await store.add_recording("cut", user_id="u2", source="stream")
    await store.add_recording("code", first_job=NextJob("chunk", {}))

    samples = await scrape(api)
    assert recordings(samples) == {"upload": 1.0, "stream": 2.0, "api": 1.0}
    assert samples[("lifeline_recordings_open", ())] == 2.0
    assert samples[("lifeline_audio_stored_seconds", ())] == pytest.approx(2.5)

    await store.delete_recording("up")
    await store.enqueue("chunk", {}, recording_id="live")  # the stream ended
    samples = await scrape(api)
    assert recordings(samples) == {"upload": 0.0, "stream": 2.0, "api": 1.0}
    assert samples[("lifeline_recordings_open", ())] == 1.0
    assert samples[("lifeline_audio_stored_seconds", ())] == pytest.approx(0.5)


async def test_a_source_nobody_expected_is_still_counted(api: Api) -> None:
    await api.ctx.store.add_recording("imported", source="import")
    samples = await scrape(api)
    assert recordings(samples) == {"upload": 0.0, "stream": 0.0, "api": 0.0, "import": 1.0}

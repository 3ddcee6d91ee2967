"""``lifeline submit --wait`` follows every file it uploaded, by audio_uuid: two files with the
same name in different directories are two conversations (the service here is an httpx
MockTransport that answers like the real one)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifeline import cli


class Service:
    """Uploads get new ids; each conversation is processing on its first poll, then ``done``."""

    def __init__(self, done: dict[str, str] | None = None) -> None:
        self.ids = (f"uuid-{i}" for i in itertools.count(1))
        self.polls: dict[str, int] = {}
        self.done = done or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/audio/upload":
            name = request.content.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
            item = {
                "status": "queued",
                "audio_uuid": next(self.ids),
                "filename": name,
                "duration_seconds": 1.0,
            }
            return httpx.Response(202, json={"files": [item]})
        audio_uuid = request.url.path.rsplit("/", 1)[1]
        self.polls[audio_uuid] = self.polls.get(audio_uuid, 0) + 1
        status = "processing" if self.polls[audio_uuid] == 1 else self.done.get(audio_uuid, "completed")
        body: dict[str, Any] = {
            "audio_uuid": audio_uuid,
            "status": status,
            "stages": {"chunk": "completed", "transcription": status},
            "transcript": {"text": f"the words of {audio_uuid}"},
            "memories": [],
            "action_items": [],
        }
        return httpx.Response(200, content=json.dumps(body))


@pytest.fixture
def same_names(tmp_path: Path) -> list[Path]:
    files = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "x.wav"
        path.write_bytes(b"RIFF" + folder.encode())
        files.append(path)
    return files


def test_files_with_the_same_name_are_both_followed(
    same_names: list[Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.time, "sleep", lambda _: None)
    monkeypatch.setattr(cli.console, "width", 1000)  # a line per line, however long the paths
    service = Service()
    with httpx.Client(transport=httpx.MockTransport(service), base_url="http://lifeline.test") as client:
        failures = cli._upload_all(client, same_names, None, True, 60.0)
    assert failures == 0
    assert service.polls == {"uuid-1": 2, "uuid-2": 2}  # each followed until it completed
    out = capsys.readouterr().out
    assert "the words of uuid-1" in out
    assert "the words of uuid-2" in out
    # shown by their paths, which tell them apart
    assert f"{same_names[0]}: completed" in out
    assert f"{same_names[1]}: completed" in out


def test_one_of_two_same_named_files_failing_counts_once(
    same_names: list[Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.time, "sleep", lambda _: None)
    monkeypatch.setattr(cli.console, "width", 1000)  # a line per line, however long the paths
    service = Service(done={"uuid-1": "dead_letter"})
    with httpx.Client(transport=httpx.MockTransport(service), base_url="http://lifeline.test") as client:
        failures = cli._upload_all(client, same_names, None, True, 60.0)
    assert failures == 1
    assert service.polls == {"uuid-1": 2, "uuid-2": 2}
    out = capsys.readouterr().out
    assert f"{same_names[0]}: dead_letter" in out

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

# what the service does instead of answering a poll: raise (the connection failed) or a status
Fault = httpx.TransportError | int


class Service:
    """Uploads get new ids; each conversation is processing on its first poll, then ``done``.

    ``faults``: what the next polls (of any conversation) meet instead, one each, in order (a
    connection error raised, or an HTTP status answered); ``gone``: conversations deleted (404)."""

    def __init__(
        self,
        done: dict[str, str] | None = None,
        faults: list[Fault] | None = None,
        gone: set[str] | None = None,
    ) -> None:
        self.ids = (f"uuid-{i}" for i in itertools.count(1))
        self.polls: dict[str, int] = {}
        self.done = done or {}
        self.faults = list(faults or [])
        self.faulted: list[tuple[str, Fault]] = []  # the polls that met a fault
        self.gone = gone or set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/conversations/"):
            audio_uuid = request.url.path.rsplit("/", 1)[1]
            if self.faults:
                fault = self.faults.pop(0)
                self.faulted.append((audio_uuid, fault))
                if isinstance(fault, Exception):
                    raise fault
                return httpx.Response(fault, json={"detail": f"fault {fault}"})
            if audio_uuid in self.gone:
                return httpx.Response(404, json={"detail": f"no conversation {audio_uuid!r}"})
        return self.answer(request)

    def answer(self, request: httpx.Request) -> httpx.Response:
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


class FakeTime:
    """``clock`` and ``sleep`` for ``_follow``: sleeping moves the clock; the sleeps are kept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def connect_error() -> httpx.ConnectError:
    return httpx.ConnectError("[Errno 111] Connection refused")


def test_an_outage_while_following_is_waited_out_and_reported_once(
    same_names: list[Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service restarts while the files are followed: connection errors, then 503s while it
    starts; every file is still followed to its end, and the outage is reported once."""
    sleeps: list[float] = []
    monkeypatch.setattr(cli.time, "sleep", sleeps.append)
    monkeypatch.setattr(cli.console, "width", 1000)
    faults: list[Fault] = [connect_error() for _ in range(4)] + [503, 503, 502]
    service = Service(faults=faults)
    with httpx.Client(transport=httpx.MockTransport(service), base_url="http://lifeline.test") as client:
        failures = cli._upload_all(client, same_names, None, True, 3600.0)
    assert failures == 0
    assert [fault for _, fault in service.faulted] == faults
    assert service.polls == {"uuid-1": 2, "uuid-2": 2}
    out = capsys.readouterr().out
    assert f"{same_names[0]}: completed" in out
    assert f"{same_names[1]}: completed" in out
    assert out.count("retrying for up to") == 1
    assert "ConnectError: [Errno 111] Connection refused" in out
    assert out.count("the service answers again") == 1
    # a growing wait while it cannot answer, never longer than the longest backoff; the usual
    # poll interval again once it answers (a connection error ends a round of polls, a 5xx of
    # one conversation does not: the two 503s and the 502 take two rounds)
    assert sleeps[:6] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert sleeps[6:] == [cli.FOLLOW_POLL] * (len(sleeps) - 6)


def test_following_gives_up_at_the_deadline_and_not_before() -> None:
    """A service that never comes back: polled again and again until --timeout, then every file
    that is not done counts as failed, with what the service last said."""
    time = FakeTime()
    service = Service(faults=[503] * 3 + [connect_error() for _ in range(1000)])
    with httpx.Client(transport=httpx.MockTransport(service), base_url="http://lifeline.test") as client:
        failures = cli._follow(
            client, [("a.wav", "uuid-1"), ("b.wav", "uuid-2")], 60.0, clock=time.clock, sleep=time.sleep
        )
    assert failures == 2
    assert time.now == 1060.0  # waited until the deadline, not past it
    assert max(time.sleeps) == cli.FOLLOW_BACKOFF_MAX
    assert 8 <= len(service.faulted) <= 12  # a poll every ten seconds at most, not a busy loop
    assert service.polls == {}


def test_the_deadline_message_names_the_last_problem(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.console, "width", 1000)
    time = FakeTime()
    service = Service(faults=[connect_error()] * 3 + [503] * 1000)
    with httpx.Client(transport=httpx.MockTransport(service), base_url="http://lifeline.test") as client:
        assert cli._follow(client, [("a.wav", "uuid-1")], 30.0, clock=time.clock, sleep=time.sleep) == 1
    out = capsys.readouterr().out
    assert out.count("retrying for up to") == 1
    assert "a.wav: not done after 30 s (the service still cannot answer: HTTP 503: fault 503)" in out


def test_only_a_deleted_conversation_fails_while_the_others_are_followed(
    same_names: list[Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.time, "sleep", lambda _: None)
    monkeypatch.setattr(cli.console, "width", 1000)
    service = Service(faults=[503, connect_error(), 503], gone={"uuid-1"})
    with httpx.Client(transport=httpx.MockTransport(service), base_url="http://lifeline.test") as client:
        failures = cli._upload_all(client, same_names, None, True, 60.0)
    assert failures == 1
    assert service.polls == {"uuid-2": 2}
    out = capsys.readouterr().out
    assert f"{same_names[0]}: HTTP 404 (deleted):" in out
    assert f"{same_names[1]}: completed" in out


def test_a_revoked_token_stops_following_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    time = FakeTime()
    service = Service(faults=[401])
    with httpx.Client(transport=httpx.MockTransport(service), base_url="http://lifeline.test") as client:
        failures = cli._follow(
            client, [("a.wav", "uuid-1"), ("b.wav", "uuid-2")], 60.0, clock=time.clock, sleep=time.sleep
        )
    assert failures == 2
    assert len(service.faulted) == 1  # no retry can get through
    assert service.polls == {}
    assert time.sleeps == []
    assert "HTTP 401:" in capsys.readouterr().out


class OneBroken(Service):
    """``uuid-1`` answers 500 at every poll (a bug on that one recording); the others are fine."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/conversations/uuid-1":
            return httpx.Response(500, json={"detail": "internal error"})
        return super().__call__(request)


def test_one_conversation_the_service_cannot_read_does_not_hold_up_the_others() -> None:
    time = FakeTime()
    service = OneBroken()
    with httpx.Client(transport=httpx.MockTransport(service), base_url="http://lifeline.test") as client:
        failures = cli._follow(
            client, [("a.wav", "uuid-1"), ("b.wav", "uuid-2")], 60.0, clock=time.clock, sleep=time.sleep
        )
    assert failures == 1  # only the broken one
    assert service.polls == {"uuid-2": 2}  # followed to completion although uuid-1 came first

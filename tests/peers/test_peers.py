"""The peers speak their services' APIs, and each fault does what it says."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from peers.mongo import MongoPeer
from peers.server import Fault, HTTPPeer
from peers.wyoming import WyomingPeer, read_event, write_event


def test_ollama_answers_like_ollama(ollama_server: HTTPPeer) -> None:
    with httpx.Client(base_url=ollama_server.url, timeout=5) as client:
        assert client.get("/").text == "Ollama is running"
        tags = client.get("/api/tags").json()
        assert [m["name"] for m in tags["models"]] == ["llama3.2:latest", "all-minilm:latest"]
        assert tags["models"][0]["details"]["format"] == "gguf"
        once = client.post("/api/generate", json={"model": "llama3.2", "prompt": "hi there", "stream": False})
        assert once.json()["response"] == "You said: hi there"
        assert once.json()["done"] is True
        streamed = client.post(
            "/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "a b"}]}
        )
        assert streamed.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in streamed.text.splitlines()]
        assert "".join(line["message"]["content"] for line in lines) == "You said: a b"
        assert [line["done"] for line in lines][-1] is True
        embed = client.post("/api/embed", json={"model": "all-minilm", "input": ["one", "two", "one"]}).json()
        assert len(embed["embeddings"]) == 3
        assert len(embed["embeddings"][0]) == 384
        assert embed["embeddings"][0] == embed["embeddings"][2] != embed["embeddings"][1]
        missing = client.post("/api/generate", json={"model": "mistral", "prompt": "x"})
        assert missing.status_code == 404
        assert missing.json() == {"error": 'model "mistral" not found, try pulling it first'}


def test_openai_answers_like_openai(openai_server: HTTPPeer) -> None:
    with httpx.Client(base_url=openai_server.url, timeout=5) as client:
        models = client.get("/v1/models").json()
        assert models["object"] == "list"
        assert "gpt-4o-mini" in [m["id"] for m in models["data"]]
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hey"}]},
        ).json()
        assert chat["object"] == "chat.completion"
        assert chat["choices"][0]["message"] == {
            "role": "assistant",
            "content": "You said: hey",
            "refusal": None,
        }
        stream = client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x y"}]},
        )
        events = [line[len("data: ") :] for line in stream.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
        assert text == "You said: x y"
        emb = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "abc"}).json()
        assert emb["data"][0]["object"] == "embedding"
        assert len(emb["data"][0]["embedding"]) == 384
        asr = client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", b"\x00" * 64000, "audio/wav")},
            data={"model": "whisper-1", "response_format": "verbose_json"},
        ).json()
        assert asr["text"] == "transcript of 64000 bytes"
        assert asr["duration"] == 2.0
        assert asr["segments"][0]["end"] == 2.0
        empty = client.post(
            "/v1/audio/transcriptions", files={"file": ("a.wav", b"")}, data={"model": "whisper-1"}
        )
        assert empty.status_code == 400
        assert empty.json()["error"]["type"] == "invalid_request_error"
        assert client.get("/health").text == "OK"


def test_openai_checks_the_key() -> None:
    from peers.openai import openai_peer

    with openai_peer(api_key="sk-test") as peer, httpx.Client(base_url=peer.url, timeout=5) as client:
        refused = client.get("/v1/models")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/v1/models", headers={"Authorization": "Bearer sk-test"}).status_code == 200


def test_qdrant_stores_and_searches_vectors(qdrant_server: HTTPPeer) -> None:
    with httpx.Client(base_url=qdrant_server.url, timeout=5) as client:
        assert client.get("/readyz").text == "all shards are ready"
        assert client.get("/healthz").status_code == 200
        created = client.put("/collections/memories", json={"vectors": {"size": 3, "distance": "Cosine"}})
        assert created.json()["result"] is True
        assert created.json()["status"] == "ok"
        again = client.put("/collections/memories", json={"vectors": {"size": 3, "distance": "Cosine"}})
        assert again.status_code == 409
        assert "already exists" in again.json()["status"]["error"]
        upsert = client.put(
            "/collections/memories/points",
            params={"wait": "true"},
            json={
                "points": [
                    {"id": 1, "vector": [1.0, 0.0, 0.0], "payload": {"user": "a", "text": "x"}},
                    {"id": 2, "vector": [0.0, 1.0, 0.0], "payload": {"user": "a", "text": "y"}},
                    {
                        "id": "5c56c793-69f3-4fbf-87e6-c4bf54c28c26",
                        "vector": [0.9, 0.1, 0.0],
                        "payload": {"user": "b"},
                    },
                ]
            },
        )
        assert upsert.json()["result"]["status"] == "completed"
        hits = client.post(
            "/collections/memories/points/search",
            json={"vector": [1.0, 0.0, 0.0], "limit": 2, "with_payload": True},
        ).json()["result"]
        assert [h["id"] for h in hits] == [1, "5c56c793-69f3-4fbf-87e6-c4bf54c28c26"]
        assert hits[0]["score"] == pytest.approx(1.0)
        only_a = client.post(
            "/collections/memories/points/query",
            json={
                "query": [1.0, 0.0, 0.0],
                "limit": 5,
                "filter": {"must": [{"key": "user", "match": {"value": "a"}}]},
            },
        ).json()["result"]["points"]
        assert [p["id"] for p in only_a] == [1, 2]
        wrong = client.put("/collections/memories/points", json={"points": [{"id": 3, "vector": [1.0]}]})
        assert wrong.status_code == 400
        assert "dimension" in wrong.json()["status"]["error"]
        client.post("/collections/memories/points/delete", json={"points": [1]})
        assert client.get("/collections/memories").json()["result"]["points_count"] == 2
        missing = client.post("/collections/nope/points/search", json={"vector": [1, 0, 0]})
        assert missing.status_code == 404
        assert "doesn't exist" in missing.json()["status"]["error"]


@pytest.mark.parametrize(
    ("fault", "status", "shape"),
    [(Fault.ERROR_500, 500, "error"), (Fault.RATE_LIMIT, 429, "error"), (Fault.BAD_REQUEST, 400, "error")],
)
def test_error_faults_answer_with_the_services_own_bodies(fault: Fault, status: int, shape: str) -> None:
    from peers import deepgram_peer, ollama_peer, openai_peer, qdrant_peer

    for make, path, check in (
        (ollama_peer, "/api/tags", lambda body: isinstance(body["error"], str)),
        (openai_peer, "/v1/models", lambda body: set(body["error"]) == {"message", "type", "param", "code"}),
        (qdrant_peer, "/readyz", lambda body: "error" in body["status"]),
        (deepgram_peer, "/v1/projects", lambda body: "err_msg" in body),
    ):
        with make() as peer, httpx.Client(base_url=peer.url, timeout=5) as client:
            peer.set_fault(fault)
            response = client.get(path, headers={"Authorization": "Token test-key"})
            assert response.status_code == status
            assert check(response.json())
            if status == 429:
                assert response.headers["retry-after"] == "1"


def test_refuse_closes_the_listener_and_ok_reopens_it_on_the_same_port(ollama_server: HTTPPeer) -> None:
    url = ollama_server.url
    with httpx.Client(base_url=url, timeout=2) as client:
        assert client.get("/").status_code == 200
        ollama_server.set_fault(Fault.REFUSE)
        with pytest.raises(httpx.ConnectError):
            client.get("/")
        ollama_server.ok()
        assert ollama_server.url == url
        assert client.get("/").status_code == 200


def test_hang_never_answers_until_switched_off(ollama_server: HTTPPeer) -> None:
    ollama_server.set_fault(Fault.HANG)
    with httpx.Client(base_url=ollama_server.url, timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        client.get("/api/tags")
    ollama_server.ok()
    with httpx.Client(base_url=ollama_server.url, timeout=2) as client:
        assert client.get("/api/tags").status_code == 200
    hung = ollama_server.requests_to("/api/tags")[0]
    assert hung.status is None
    assert hung.answered_at is None


def test_reset_slow_and_limited_faults(ollama_server: HTTPPeer) -> None:
    with httpx.Client(base_url=ollama_server.url, timeout=5) as client:
        ollama_server.set_fault(Fault.RESET)
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/api/tags")
        ollama_server.set_fault(Fault.SLOW, delay=0.2)
        started = time.monotonic()
        assert client.get("/api/tags").status_code == 200
        assert time.monotonic() - started >= 0.2
        ollama_server.set_fault(Fault.ERROR_500, paths=["/api/generate"], count=2)
        assert client.get("/api/tags").status_code == 200  # another path: not affected
        body = {"model": "llama3.2", "prompt": "x", "stream": False}
        assert [client.post("/api/generate", json=body).status_code for _ in range(3)] == [500, 500, 200]
        assert ollama_server.fault is Fault.OK


async def test_wyoming_describe_and_transcribe(wyoming_server: WyomingPeer) -> None:
    reader, writer = await asyncio.open_connection(wyoming_server.host, wyoming_server.port)
    await write_event(writer, "describe")
    kind, data, _ = await asyncio.wait_for(_read(reader), 5)
    assert kind == "info"
    assert data["asr"][0]["models"][0]["languages"] == ["en"]
    await write_event(writer, "transcribe", {"language": "en"})
    await write_event(writer, "audio-start", {"rate": 16000, "width": 2, "channels": 1})
    header = {"type": "audio-chunk", "data_length": 0, "payload_length": 3200}
    writer.write(json.dumps(header).encode() + b"\n" + b"\x01" * 3200)
    await write_event(writer, "audio-stop")
    kind, data, _ = await asyncio.wait_for(_read(reader), 5)
    assert (kind, data) == ("transcript", {"text": "transcript of 3200 bytes"})
    writer.close()
    await writer.wait_closed()


async def _read(reader: asyncio.StreamReader) -> tuple[str, dict[str, object], bytes]:
    event = await read_event(reader)
    assert event is not None
    return event


async def test_mongo_answers_ping_with_cluster_time(mongo_server: MongoPeer) -> None:
    from lifeline.probes import op_msg, read_op_msg

    reader, writer = await asyncio.open_connection(mongo_server.host, mongo_server.port)
    writer.write(op_msg(7, {"ping": 1, "$db": "admin"}))
    reply = await asyncio.wait_for(read_op_msg(reader), 5)
    assert reply == {"ok": 1.0}  # the nested $clusterTime and the timestamp were skipped
    assert mongo_server.commands == ["ping"]
    writer.close()
    await writer.wait_closed()

"""The Qdrant client against a loopback Qdrant: collection created on first use, deterministic point
ids (a re-run replaces), search within one user, delete by id and by recording, and faults mapped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from lifeline.domain import PermanentError, TransientError
from lifeline.providers._http import ServiceError, ServiceRejected
from lifeline.providers.vectors import QdrantVectors, VectorPoint, point_id
from peers.qdrant import QdrantAPI
from peers.server import Fault, HTTPPeer


@pytest.fixture
def qdrant_server() -> Iterator[HTTPPeer]:
    with HTTPPeer(QdrantAPI()) as peer:
        yield peer


def point(recording: str, index: int, user: str, vector: list[float], text: str = "") -> VectorPoint:
    return VectorPoint(recording, index, user, vector, text or f"{recording}/{index}", {"category": "fact"})


def test_point_ids_are_deterministic_uuids() -> None:
    assert point_id("rec-1", 0) == point_id("rec-1", 0)
    assert point_id("rec-1", 0) != point_id("rec-1", 1) != point_id("rec-2", 0)
    assert uuid.UUID(point_id("rec-1", 0)).version == 5
    assert point("rec-1", 3, "u", [1.0]).id == point_id("rec-1", 3)
    # pinned: a changed scheme would orphan every point already stored
    assert point_id("rec-1", 0) == "2018bb80-8b1c-5c01-a69b-2a1d3430f1ee"


async def test_upsert_search_and_delete(qdrant_server: HTTPPeer) -> None:
    qdrant: dict = qdrant_server.api.collections  # type: ignore[attr-defined]
    async with QdrantVectors(url=qdrant_server.url, collection="memories") as store:
        assert await store.search([1.0, 0.0, 0.0], "alice") == []  # no collection yet: nothing found
        await store.delete_recording("rec-1")  # nor anything to delete

        await store.upsert(
            [
                point("rec-1", 0, "alice", [1.0, 0.0, 0.0], "User loves hiking"),
                point("rec-1", 1, "alice", [0.0, 1.0, 0.0], "User's sister lives in Berlin"),
                point("rec-2", 0, "bob", [1.0, 0.1, 0.0], "User loves climbing"),
            ]
        )
        assert qdrant["memories"]["size"] == 3
        assert qdrant["memories"]["distance"] == "Cosine"

        hits = await store.search([0.9, 0.1, 0.0], "alice", limit=5)
        assert [(h.recording_id, h.index, h.text) for h in hits] == [
            ("rec-1", 0, "User loves hiking"),
            ("rec-1", 1, "User's sister lives in Berlin"),
        ]
        assert hits[0].score > hits[1].score
        assert hits[0].payload["category"] == "fact"
        assert hits[0].payload["user_id"] == "alice"

        # a re-run of the memory job writes the same ids: replaced, not duplicated
        await store.upsert([point("rec-1", 0, "alice", [1.0, 0.0, 0.0], "User loves long hikes")])
        assert len(qdrant["memories"]["points"]) == 3
        hits = await store.search([1.0, 0.0, 0.0], "alice", limit=1)
        assert hits[0].text == "User loves long hikes"

        await store.delete_recording("rec-1")
        assert await store.search([1.0, 0.0, 0.0], "alice") == []
        assert [h.recording_id for h in await store.search([1.0, 0.0, 0.0], "bob")] == ["rec-2"]
        await store.upsert([])

    creates = qdrant_server.requests_to("/collections/memories", "PUT")
    assert len(creates) == 1  # created once, on first write
    indexes = [
        r.json()["field_name"] for r in qdrant_server.requests_to("/collections/memories/index", "PUT")
    ]
    assert indexes == ["user_id", "recording_id"]


async def test_delete_points_removes_exactly_those_ids(qdrant_server: HTTPPeer) -> None:
    async with QdrantVectors(url=qdrant_server.url, collection="memories") as store:
        await store.delete_points([point_id("rec-1", 0)])  # no collection yet: nothing to delete
        await store.upsert(
            [point("rec-1", i, "alice", [1.0, float(i)]) for i in range(3)]
            + [point("rec-2", 0, "bob", [0.0, 1.0])]
        )
        never_stored = point_id("rec-9", 9)
        await store.delete_points([point_id("rec-1", 0), point_id("rec-2", 0), never_stored])
        points = qdrant_server.api.points()  # type: ignore[attr-defined]
        assert set(points) == {point_id("rec-1", 1), point_id("rec-1", 2)}
        assert [h.index for h in await store.search([1.0, 1.0], "alice")] == [1, 2]
        assert await store.search([1.0, 1.0], "bob") == []
        requests_before = len(qdrant_server.requests)
        await store.delete_points([])  # nothing to do: no request at all
        assert len(qdrant_server.requests) == requests_before

    deletes = qdrant_server.requests_to("/collections/memories/points/delete", "POST")
    assert [r.json() for r in deletes] == [
        {"points": [point_id("rec-1", 0)]},
        {"points": [point_id("rec-1", 0), point_id("rec-2", 0), never_stored]},
    ]
    assert all(r.query == {"wait": ["true"]} for r in deletes)


async def test_an_existing_collection_is_reused_and_its_dimension_checked(qdrant_server: HTTPPeer) -> None:
    async with QdrantVectors(url=qdrant_server.url) as first:
        await first.upsert([point("r", 0, "u", [1.0, 0.0])])
    async with QdrantVectors(url=qdrant_server.url) as second:
        await second.upsert([point("r", 1, "u", [0.0, 1.0])])
        with pytest.raises(ServiceRejected, match="holds 2-dimensional vectors; these have 3") as caught:
            await second.upsert([point("r", 2, "u", [0.0, 1.0, 0.0])])
        with pytest.raises(ValueError, match="differing dimensions"):
            await second.upsert([point("r", 3, "u", [1.0]), point("r", 4, "u", [1.0, 0.0])])
    assert isinstance(caught.value, PermanentError)
    assert len(qdrant_server.requests_to("/collections/lifeline_memories", "PUT")) == 1


async def test_the_api_key_header(qdrant_server: HTTPPeer) -> None:
    async with QdrantVectors(url=qdrant_server.url, api_key="secret") as store:
        await store.search([1.0], "u")
    assert qdrant_server.requests[0].headers["api-key"] == "secret"


FAULTS = [
    (Fault.REFUSE, ServiceError, "cannot reach"),
    (Fault.HANG, ServiceError, "no answer in time"),
    (Fault.ERROR_500, ServiceError, "HTTP 500"),
    (Fault.RATE_LIMIT, ServiceError, "HTTP 429"),
    (Fault.BAD_REQUEST, ServiceRejected, "HTTP 400"),
]


@pytest.mark.parametrize(("fault", "error", "message"), FAULTS, ids=[f.value for f, _, _ in FAULTS])
@pytest.mark.parametrize("operation", ["upsert", "search", "delete", "delete_points"])
async def test_faults(
    qdrant_server: HTTPPeer, fault: Fault, error: type[Exception], message: str, operation: str
) -> None:
    async with QdrantVectors(url=qdrant_server.url, timeout_seconds=0.5) as store:
        await store.upsert([point("r", 0, "u", [1.0, 0.0])])
        call = {
            "upsert": lambda: store.upsert([point("r", 1, "u", [0.0, 1.0])]),
            "search": lambda: store.search([1.0, 0.0], "u"),
            "delete": lambda: store.delete_recording("r"),
            "delete_points": lambda: store.delete_points([point_id("r", 1)]),
        }[operation]
        qdrant_server.set_fault(fault)
        try:
            with pytest.raises(error, match=message) as caught:
                await call()
        finally:
            qdrant_server.ok()
        assert isinstance(caught.value, TransientError) is (fault is not Fault.BAD_REQUEST)
        assert caught.value.service == "vectors"  # type: ignore[attr-defined]
        assert len(await store.search([1.0, 0.0], "u")) == 1  # and it works again

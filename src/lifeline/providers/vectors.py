"""The vector store for memories: a Protocol and a Qdrant REST client.

Qdrant is optional (used when ``LIFELINE_QDRANT_URL`` is set). There is deliberately no embedded
vector store: memories are kept in the store itself and searched there by full text (SQLite FTS5,
PostgreSQL full text), so without Qdrant nothing is lost but semantic search, and there is no second
database that could disagree with the first.

Writes are idempotent: a point's id is a UUIDv5 of (recording id, memory index), so re-running a
memory job overwrites the same points instead of adding new ones. Points are deleted by id
(:meth:`VectorStore.delete_points`: one memory, or the indices a re-run no longer produces) or all of
a recording's at once (:meth:`VectorStore.delete_recording`: the recording is deleted, or a crashed
run may have left points nobody knows the ids of).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from lifeline.providers._http import (
    HttpProvider,
    MalformedResponse,
    ServiceRejected,
    base_url,
    json_body,
    request,
)

VECTORS_TIMEOUT: Final = 30.0
# The namespace of Lifeline's point ids: uuid5(NAMESPACE_URL, "https://lifeline.invalid/memory").
POINT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://lifeline.invalid/memory")


def point_id(recording_id: str, index: int) -> str:
    """The deterministic id of memory ``index`` of ``recording_id``."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{recording_id}/{index}"))


@dataclass(frozen=True, slots=True)
class VectorPoint:
    """One memory's vector and what a search needs to show for it."""

    recording_id: str
    index: int
    user_id: str
    vector: Sequence[float]
    text: str
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return point_id(self.recording_id, self.index)


@dataclass(frozen=True, slots=True)
class SearchHit:
    recording_id: str
    index: int
    text: str
    score: float
    payload: Mapping[str, Any]


@runtime_checkable
class VectorStore(Protocol):
    """Upsert, search within one user's points, delete points by id or a recording's points."""

    name: str

    async def upsert(self, points: Sequence[VectorPoint]) -> None: ...

    async def search(self, vector: Sequence[float], user_id: str, limit: int = 10) -> list[SearchHit]: ...

    async def delete_points(self, ids: Sequence[str]) -> None:
        """Delete the points with these ids; ids that do not exist are no error."""
        ...

    async def delete_recording(self, recording_id: str) -> None:
        """Delete every point of the recording (by its ``recording_id`` payload)."""
        ...

    async def aclose(self) -> None: ...


def _payload(point: VectorPoint) -> dict[str, Any]:
    payload: dict[str, Any] = dict(point.payload)
    payload.update(recording_id=point.recording_id, index=point.index, user_id=point.user_id, text=point.text)
    return payload


class _Hit(BaseModel):
    id: str | int
    score: float
    payload: dict[str, Any] | None = None


class _SearchResult(BaseModel):
    result: list[_Hit]


class QdrantVectors(HttpProvider):
    """Qdrant over its REST API. The collection is created on first write (cosine distance, the
    dimension of the first vector) with keyword indexes on ``user_id`` and ``recording_id``."""

    name = "qdrant"
    service = "vectors"

    def __init__(
        self,
        *,
        url: str,
        collection: str = "lifeline_memories",
        api_key: str | None = None,
        timeout_seconds: float = VECTORS_TIMEOUT,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(timeout_seconds=timeout_seconds, client=client)
        self.url = base_url(url)
        self.collection = collection
        self.api_key = api_key
        self._ready_dimension: int | None = None

    @property
    def _base(self) -> str:
        return f"{self.url}/collections/{quote(self.collection, safe='')}"

    def _headers(self) -> dict[str, str]:
        return {"api-key": self.api_key} if self.api_key else {}

    async def _call(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (),
    ) -> httpx.Response:
        return await request(
            self.client,
            self.service,
            method,
            url,
            json=json,
            params=params,
            headers=self._headers(),
            ok_statuses=ok,
        )

    async def _dimension(self) -> int | None:
        """The collection's vector size, or None if it does not exist."""
        response = await self._call("GET", self._base, ok=(404,))
        if response.status_code == 404:
            return None
        body = json_body(self.service, response)
        try:
            size = body["result"]["config"]["params"]["vectors"]["size"]
        except (KeyError, TypeError) as e:
            raise MalformedResponse(self.service, "collection info without a vector size") from e
        if not isinstance(size, int):
            raise MalformedResponse(self.service, f"collection vector size {size!r} is not a number")
        return size

    async def ensure_collection(self, dimension: int) -> None:
        """Create the collection if it does not exist; refuse one of another dimension."""
        if self._ready_dimension == dimension:
            return
        existing = await self._dimension()
        if existing is None:
            created = await self._call(
                "PUT",
                self._base,
                json={"vectors": {"size": dimension, "distance": "Cosine"}},
                ok=(409,),  # created by another worker in the meantime
            )
            if created.status_code == 409:
                existing = await self._dimension()
            else:
                for name in ("user_id", "recording_id"):
                    await self._call(
                        "PUT",
                        f"{self._base}/index",
                        params={"wait": "true"},
                        json={"field_name": name, "field_schema": "keyword"},
                    )
                existing = dimension
        if existing != dimension:
            raise ServiceRejected(
                self.service,
                f"collection {self.collection!r} holds {existing}-dimensional vectors; these have "
                f"{dimension} (a different embedding model: use another collection)",
            )
        self._ready_dimension = dimension

    async def upsert(self, points: Sequence[VectorPoint]) -> None:
        if not points:
            return
        dimensions = {len(p.vector) for p in points}
        if len(dimensions) != 1:
            raise ValueError(f"points of differing dimensions: {sorted(dimensions)}")
        await self.ensure_collection(dimensions.pop())
        body = {
            "points": [
                {"id": p.id, "vector": [float(x) for x in p.vector], "payload": _payload(p)} for p in points
            ]
        }
        await self._call("PUT", f"{self._base}/points", params={"wait": "true"}, json=body)

    async def search(self, vector: Sequence[float], user_id: str, limit: int = 10) -> list[SearchHit]:
        response = await self._call(
            "POST",
            f"{self._base}/points/search",
            json={
                "vector": [float(x) for x in vector],
                "limit": limit,
                "with_payload": True,
                "filter": {"must": [{"key": "user_id", "match": {"value": user_id}}]},
            },
            ok=(404,),
        )
        if response.status_code == 404:
            return []  # no collection yet: nothing stored
        try:
            result = _SearchResult.model_validate(json_body(self.service, response))
        except ValidationError as e:
            raise MalformedResponse(self.service, f"unexpected search answer: {e.errors()[0]['msg']}") from e
        hits = []
        for hit in result.result:
            payload = hit.payload or {}
            hits.append(
                SearchHit(
                    recording_id=str(payload.get("recording_id", "")),
                    index=int(payload.get("index", -1)),
                    text=str(payload.get("text", "")),
                    score=hit.score,
                    payload=payload,
                )
            )
        return hits

    async def delete_points(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        await self._call(
            "POST",
            f"{self._base}/points/delete",
            params={"wait": "true"},
            json={"points": [str(i) for i in ids]},
            ok=(404,),  # no collection: nothing to delete
        )

    async def delete_recording(self, recording_id: str) -> None:
        await self._call(
            "POST",
            f"{self._base}/points/delete",
            params={"wait": "true"},
            json={"filter": {"must": [{"key": "recording_id", "match": {"value": recording_id}}]}},
            ok=(404,),  # no collection: nothing to delete
        )

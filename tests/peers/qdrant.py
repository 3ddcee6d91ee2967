"""A Qdrant server (REST): ``/readyz``, ``/healthz``, ``/livez``, collections (create, get, list,
delete), points (upsert, search, query, scroll, delete) with payload filters (``must``,
``must_not``, ``should`` of ``match``), in memory, with Qdrant's answers and error bodies.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from peers.server import API, Fault, HTTPError, HTTPPeer, Request, Response, json_response, text_response

DISTANCES = ("Cosine", "Dot", "Euclid", "Manhattan")


def _point_id(value: Any) -> int | str:
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise HTTPError(400, f"Format error in JSON body: value {value!r} is not a valid point ID")


def _matches(payload: dict[str, Any], condition: dict[str, Any]) -> bool:
    if "must" in condition or "should" in condition or "must_not" in condition:
        return _filter(payload, condition)
    key, match = condition.get("key"), condition.get("match") or {}
    value = payload.get(str(key))
    if "value" in match:
        return bool(value == match["value"] or (isinstance(value, list) and match["value"] in value))
    if "any" in match:
        return value in match["any"]
    if "except" in match:
        return value not in match["except"]
    raise HTTPError(400, f"Format error in JSON body: unsupported condition {condition}")


def _filter(payload: dict[str, Any], flt: dict[str, Any] | None) -> bool:
    if not flt:
        return True
    must = flt.get("must") or []
    should = flt.get("should") or []
    must_not = flt.get("must_not") or []
    return (
        all(_matches(payload, c) for c in must)
        and (not should or any(_matches(payload, c) for c in should))
        and not any(_matches(payload, c) for c in must_not)
    )


def _score(distance: str, a: list[float], b: list[float]) -> float:
    if distance == "Dot":
        return sum(x * y for x, y in zip(a, b, strict=True))
    if distance == "Euclid":
        return math.dist(a, b)
    if distance == "Manhattan":
        return sum(abs(x - y) for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a)) or 1.0
    nb = math.sqrt(sum(y * y for y in b)) or 1.0
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


class QdrantAPI(API):
    def __init__(self) -> None:
        super().__init__()
        self.collections: dict[str, dict[str, Any]] = {}
        self.indexes: dict[str, dict[str, str]] = {}  # payload indexes per collection
        self._operation = 0
        self.route("PUT", "/collections/{name}/index", self._create_index)
        self.route(
            "GET",
            "/",
            lambda r: self._ok({"title": "qdrant - vector search engine", "version": "1.12.4"}, raw=True),
        )
        self.route("GET", "/readyz", lambda r: text_response("all shards are ready"))
        self.route("GET", "/healthz", lambda r: text_response("healthz check passed"))
        self.route("GET", "/livez", lambda r: text_response("healthz check passed"))
        self.route("GET", "/collections", self._list)
        self.route("GET", "/collections/{name}", self._get)
        self.route("PUT", "/collections/{name}", self._create)
        self.route("DELETE", "/collections/{name}", self._delete_collection)
        self.route("PUT", "/collections/{name}/points", self._upsert)
        self.route("POST", "/collections/{name}/points/search", self._search)
        self.route("POST", "/collections/{name}/points/query", self._query)
        self.route("POST", "/collections/{name}/points/scroll", self._scroll)
        self.route("POST", "/collections/{name}/points/delete", self._delete_points)

    def error(self, status: int, message: str) -> Response:
        return json_response({"status": {"error": message}, "time": 0.000012}, status)

    def fault_message(self, fault: Fault) -> str:
        if fault is Fault.RATE_LIMIT:
            return "Too many requests"
        if fault is Fault.ERROR_500:
            return "Service internal error: task panicked"
        return "Format error in JSON body: invalid request"

    @staticmethod
    def _ok(result: Any, *, raw: bool = False) -> Response:
        return json_response(result if raw else {"result": result, "status": "ok", "time": 0.000153})

    def _create_index(self, request: Request, name: str) -> Response:
        self._collection(name)
        body = self._body(request)
        if not isinstance(body.get("field_name"), str):
            raise HTTPError(400, "Format error in JSON body: missing field `field_name`")
        self.indexes.setdefault(name, {})[body["field_name"]] = str(body.get("field_schema"))
        return self._operation_result()

    def points(self, collection: str | None = None) -> dict[Any, dict[str, Any]]:
        """The stored points by id (for tests): of ``collection``, or of the only collection."""
        if collection is None:
            if len(self.collections) != 1:
                raise AssertionError(f"name one of the collections {sorted(self.collections)}")
            collection = next(iter(self.collections))
        points: dict[Any, dict[str, Any]] = self.collections[collection]["points"]
        return points

    def _collection(self, name: str) -> dict[str, Any]:
        if name not in self.collections:
            raise HTTPError(404, f"Not found: Collection `{name}` doesn't exist!")
        return self.collections[name]

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        try:
            body = request.json() or {}
        except ValueError:
            raise HTTPError(400, "Format error in JSON body: expected value") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "Format error in JSON body: expected an object")
        return body

    def _list(self, request: Request) -> Response:
        return self._ok({"collections": [{"name": n} for n in self.collections]})

    def _get(self, request: Request, name: str) -> Response:
        c = self._collection(name)
        return self._ok(
            {
                "status": "green",
                "optimizer_status": "ok",
                "indexed_vectors_count": 0,
                "points_count": len(c["points"]),
                "segments_count": 1,
                "config": {
                    "params": {"vectors": {"size": c["size"], "distance": c["distance"]}, "shard_number": 1}
                },
                "payload_schema": {},
            }
        )

    def _create(self, request: Request, name: str) -> Response:
        body = self._body(request)
        vectors = body.get("vectors")
        if not isinstance(vectors, dict) or not isinstance(vectors.get("size"), int):
            raise HTTPError(400, "Format error in JSON body: missing field `vectors`")
        if vectors.get("distance") not in DISTANCES:
            raise HTTPError(400, f"Format error in JSON body: unknown variant `{vectors.get('distance')}`")
        if name in self.collections:
            raise HTTPError(409, f"Wrong input: Collection `{name}` already exists!")
        self.collections[name] = {"size": vectors["size"], "distance": vectors["distance"], "points": {}}
        return self._ok(True)

    def _delete_collection(self, request: Request, name: str) -> Response:
        return self._ok(self.collections.pop(name, None) is not None)

    def _operation_result(self) -> Response:
        self._operation += 1
        return self._ok({"operation_id": self._operation, "status": "completed"})

    def _upsert(self, request: Request, name: str) -> Response:
        c = self._collection(name)
        body = self._body(request)
        if "batch" in body:
            batch = body["batch"]
            payloads = batch.get("payloads") or [None] * len(batch["ids"])
            points = [
                {"id": i, "vector": v, "payload": p}
                for i, v, p in zip(batch["ids"], batch["vectors"], payloads, strict=True)
            ]
        else:
            points = body.get("points")
            if not isinstance(points, list):
                raise HTTPError(400, "Format error in JSON body: missing field `points`")
        for point in points:
            vector = point.get("vector")
            if not isinstance(vector, list) or len(vector) != c["size"]:
                got = len(vector) if isinstance(vector, list) else 0
                raise HTTPError(
                    400, f"Wrong input: Vector dimension error: expected dim: {c['size']}, got {got}"
                )
        for point in points:
            c["points"][_point_id(point["id"])] = {
                "vector": point["vector"],
                "payload": point.get("payload") or {},
            }
        return self._operation_result()

    def _hits(self, c: dict[str, Any], vector: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(vector, list) or len(vector) != c["size"]:
            raise HTTPError(400, f"Wrong input: Vector dimension error: expected dim: {c['size']}")
        reverse = c["distance"] in ("Cosine", "Dot")
        hits = [
            (pid, _score(c["distance"], vector, p["vector"]), p)
            for pid, p in c["points"].items()
            if _filter(p["payload"], body.get("filter"))
        ]
        threshold = body.get("score_threshold")
        if threshold is not None:
            hits = [h for h in hits if (h[1] >= threshold if reverse else h[1] <= threshold)]
        hits.sort(key=lambda h: h[1], reverse=reverse)
        offset, limit = int(body.get("offset") or 0), int(body.get("limit") or 10)
        with_payload = body.get("with_payload", False)
        with_vector = body.get("with_vector", False)
        return [
            {
                "id": pid,
                "version": 0,
                "score": score,
                "payload": p["payload"] if with_payload else None,
                "vector": p["vector"] if with_vector else None,
            }
            for pid, score, p in hits[offset : offset + limit]
        ]

    def _search(self, request: Request, name: str) -> Response:
        c = self._collection(name)
        body = self._body(request)
        return self._ok(self._hits(c, body.get("vector"), body))

    def _query(self, request: Request, name: str) -> Response:
        c = self._collection(name)
        body = self._body(request)
        body.setdefault("with_payload", False)
        return self._ok({"points": self._hits(c, body.get("query"), body)})

    def _scroll(self, request: Request, name: str) -> Response:
        c = self._collection(name)
        body = self._body(request)
        limit = int(body.get("limit") or 10)
        found = [
            {"id": pid, "payload": p["payload"] if body.get("with_payload", True) else None}
            for pid, p in sorted(c["points"].items(), key=lambda kv: str(kv[0]))
            if _filter(p["payload"], body.get("filter"))
        ]
        return self._ok(
            {"points": found[:limit], "next_page_offset": found[limit]["id"] if len(found) > limit else None}
        )

    def _delete_points(self, request: Request, name: str) -> Response:
        c = self._collection(name)
        body = self._body(request)
        if "points" in body:
            ids = body["points"]
            if not isinstance(ids, list):
                raise HTTPError(400, "Format error in JSON body: `points` must be a list of point ids")
            for pid in [_point_id(i) for i in ids]:  # one bad id: nothing is deleted
                c["points"].pop(pid, None)
        elif "filter" in body:
            for pid in [pid for pid, p in c["points"].items() if _filter(p["payload"], body["filter"])]:
                del c["points"][pid]
        else:
            raise HTTPError(400, "Format error in JSON body: expected `points` or `filter`")
        return self._operation_result()


def qdrant_peer() -> HTTPPeer:
    """A Qdrant peer (not started: use it as a context manager)."""
    return HTTPPeer(QdrantAPI())

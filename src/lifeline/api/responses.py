"""The error responses each route documents, so that the OpenAPI schema lists every status code a
route can answer with, and the body it carries (schemathesis checks both)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lifeline.api.schemas import ErrorOut

_DESCRIPTIONS: dict[int, str] = {
    400: "bad request",
    401: "not logged in, or the token is expired, revoked or forged",
    403: "superuser only",
    404: "unknown, or not yours",
    409: "conflicts with the current state",
    413: "too large or too long",
    415: "not a supported format",
    422: "the content cannot be processed",
    429: "too many failed logins; see Retry-After",
    503: "the store is unavailable",
}


def errors(*codes: int, described: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that may answer ``codes``, each with an ``ErrorOut`` body;
    ``described`` overrides the generic description of a code."""
    overrides = dict(described or {})
    return {
        code: {"model": ErrorOut, "description": overrides.get(code, _DESCRIPTIONS[code])} for code in codes
    }


AUTHENTICATED = errors(401)
SUPERUSER = errors(401, 403)

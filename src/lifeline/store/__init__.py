"""The durable store: one interface, one implementation per database."""

from __future__ import annotations

from lifeline.store.base import Store
from lifeline.store.url import connect, parse_database_url

__all__ = ["Store", "connect", "parse_database_url"]

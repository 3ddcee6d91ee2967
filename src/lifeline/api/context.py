"""What the routes need, built once by the app factory and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lifeline.accounts import Accounts
from lifeline.config import Settings
from lifeline.queue.recovery import RecoveryManager
from lifeline.store.base import Store

if TYPE_CHECKING:
    from lifeline.pipeline import Pipeline


@dataclass
class AppContext:
    settings: Settings
    store: Store
    accounts: Accounts
    recovery: RecoveryManager
    breakers: Any | None = None  # lifeline.breakers.CircuitBreakers, once configured
    health: Any | None = None  # lifeline.health.HealthMonitor, once configured
    pipeline: Pipeline | None = None  # the stages' deletions (Qdrant points too); set by create_app
    extras: dict[str, Any] = field(default_factory=dict)

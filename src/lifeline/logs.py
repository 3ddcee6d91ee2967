"""Secrets never reach the logs: a filter that masks credentials in log records.

Uvicorn logs every WebSocket handshake with its query string (``"WebSocket /ws_pcm?token=…"``),
and Friend-Lite and Omi clients can only pass their token there. The request log of the app drops
query strings itself; this filter covers what third-party loggers write.
"""

from __future__ import annotations

import logging
import re
from typing import Final

# key=value pairs in query strings and similar text whose value is a credential
_SECRET = re.compile(r"(?i)\b(token|access_token|api_key|apikey|password|secret)=([^&\s\"']+)")
MASK: Final = "***"

# the loggers that print request lines written by others (uvicorn's handshake and access lines)
REDACTED_LOGGERS: Final = ("uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    """``text`` with the value of every credential-looking ``key=value`` replaced by ``***``."""
    return _SECRET.sub(lambda m: f"{m.group(1)}={MASK}", text)


class RedactSecrets(logging.Filter):
    """Formats the record's message once and masks credentials in it (the record then carries
    the finished text, so handlers format nothing that still holds the secret)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install_redaction() -> None:
    """Attach the filter to the loggers in :data:`REDACTED_LOGGERS` (idempotent)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())

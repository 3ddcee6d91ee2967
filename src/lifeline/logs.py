"""Secrets never reach the logs: a filter that masks credentials in log records.

Uvicorn logs every WebSocket handshake with its query string (``"WebSocket /ws_pcm?token=…"``),
and Friend-Lite and Omi clients can only pass their token there. The request log of the app drops
query strings itself; this filter covers what third-party loggers write.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Final

# key=value pairs in query strings and similar text whose value is a credential: token,
# refresh_token, id_token, api_key, apikey, key, password, secret, client_secret ...
_SECRET = re.compile(
    r"(?i)(?<![a-z0-9])((?:[a-z0-9]+_)*(?:token|api_?key|key|password|passwd|secret))=([^&\s\"']+)"
)
# the password of a URL's user information: scheme://user:password@host
_USERINFO = re.compile(r"(://[^/\s:@]*:)([^@\s/]+)@")
MASK: Final = "***"

# the loggers that print request lines written by others (uvicorn's handshake and access lines)
REDACTED_LOGGERS: Final = ("uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    """``text`` with the value of every credential-looking ``key=value``, and the password of
    every ``scheme://user:password@`` URL, replaced by ``***``."""
    return _USERINFO.sub(rf"\1{MASK}@", _SECRET.sub(lambda m: f"{m.group(1)}={MASK}", text))


def _redact_value(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


class RedactSecrets(logging.Filter):
    """Masks credentials in log records, keeping the arguments' shape where it can: formatters
    that read the arguments themselves (uvicorn's access formatter unpacks them) still find what
    they expect. When masking each argument is not enough (``"token=%s"``: the secret is in an
    argument, its name in the format), the record is replaced by its formatted, masked text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.args:
            if isinstance(record.msg, str):
                record.msg = redact(record.msg)
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging itself reports it
            return True
        if redact(message) == message:
            return True
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_value(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: _redact_value(v) for k, v in record.args.items()}
        try:
            still = record.getMessage()
        except Exception:
            still = message
        if redact(still) != still:
            record.msg, record.args = redact(message), None
        return True


def install_redaction() -> None:
    """Attach the filter to the loggers in :data:`REDACTED_LOGGERS` (idempotent)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())

"""Credentials are masked in what uvicorn logs about requests."""

from __future__ import annotations

import logging

import pytest

from lifeline.logs import install_redaction, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ws_pcm?token=eyJ.abc.def&device_name=omi", "/ws_pcm?token=***&device_name=omi"),
        ("/x?device_name=a&TOKEN=s3cr3t", "/x?device_name=a&TOKEN=***"),
        ("api_key=k1 password=p2", "api_key=*** password=***"),
        ("/ws_pcm?device_name=tokenizer", "/ws_pcm?device_name=tokenizer"),
    ],
)
def test_redact_masks_only_credential_values(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_uvicorns_websocket_handshake_line_loses_its_token(caplog: pytest.LogCaptureFixture) -> None:
    install_redaction()
    install_redaction()  # idempotent: one filter
    logger = logging.getLogger("uvicorn.error")
    assert sum(type(f).__name__ == "RedactSecrets" for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        # uvicorn's own format and arguments (websockets_impl.asgi_send)
        logger.info(
            '%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/ws_pcm?token=SECRET-VALUE&device_name=x"
        )
    assert "SECRET-VALUE" not in caplog.text
    assert '"WebSocket /ws_pcm?token=***&device_name=x" [accepted]' in caplog.text

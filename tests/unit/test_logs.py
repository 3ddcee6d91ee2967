"""Credentials are masked in what uvicorn logs about requests."""

from __future__ import annotations

import copy
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
        (
            "/cb?refresh_token=r1&id_token=i2&auth_token=a3",
            "/cb?refresh_token=***&id_token=***&auth_token=***",
        ),
        ("/x?key=k&monkey=banana&client_secret=c", "/x?key=***&monkey=banana&client_secret=***"),
        ("postgresql://lifeline:hunter2@db:5432/x", "postgresql://lifeline:***@db:5432/x"),
        ("see http://host/a@b", "see http://host/a@b"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
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


def test_uvicorns_default_access_formatter_still_works_and_masks(capsys: pytest.CaptureFixture[str]) -> None:
    """Operators who run the app under plain uvicorn get uvicorn's default logging config, whose
    access formatter unpacks the record's arguments: masking must keep their shape."""
    import logging.config
    import sys

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stdout"
    logging.config.dictConfig(config)
    try:
        install_redaction()
        access = logging.getLogger("uvicorn.access")
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5000",
            "GET",
            "/api/memories?token=SECRET-VALUE&q=hiking",
            "1.1",
            200,
        )
        sys.stdout.flush()
    finally:
        # uvicorn's config gave its loggers handlers on this test's captured stdout: take them off
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    out, err = capsys.readouterr()
    assert "Logging error" not in err
    assert "SECRET-VALUE" not in out + err
    assert "/api/memories?token=***&q=hiking" in out


def test_a_secret_passed_as_an_argument_of_a_named_placeholder_is_masked(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """``"token=%s"``: the name is in the format, the secret in the argument; masking each
    argument alone would miss it, masking the format alone would break the record."""
    install_redaction()
    logger = logging.getLogger("uvicorn.error")
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        logger.info("refreshing with token=%s for %s", "SECRET-VALUE", "omi")
        logger.info("%s - %s", "plain", "text")
    assert "SECRET-VALUE" not in caplog.text
    assert "refreshing with token=*** for omi" in caplog.text
    assert "plain - text" in caplog.text
    assert "Logging error" not in capsys.readouterr().err

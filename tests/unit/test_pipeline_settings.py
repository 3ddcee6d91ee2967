"""The provider and ingest settings: read from LIFELINE_* once, handed to the provider factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.config import SETTINGS_HELP, Settings
from lifeline.domain import ConfigError
from lifeline.providers.asr import EmbeddedWhisper, WyomingTranscriber
from lifeline.providers.factory import build_providers
from lifeline.providers.llm import OllamaExtractor, RuleBasedExtractor
from lifeline.providers.vectors import QdrantVectors


def test_the_defaults_run_offline() -> None:
    settings = Settings.from_env({})
    providers = settings.providers()
    assert (providers.asr, providers.llm, providers.embedder) == ("embedded", "embedded", "embedded")
    assert providers.qdrant_url is None
    # the model is assembled next to the other data unless told otherwise
    assert providers.model_cache_dir == Path("data") / "models"
    built = build_providers(providers)
    assert isinstance(built.transcriber, EmbeddedWhisper)
    assert isinstance(built.extractor, RuleBasedExtractor)
    assert built.vectors is None
    assert built.embedder is None
    assert (settings.upload_max_mb, settings.upload_max_seconds, settings.stream_idle_seconds) == (
        512.0,
        14400.0,
        60.0,
    )


def test_every_provider_setting_reaches_the_factory(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "LIFELINE_DATA_DIR": str(tmp_path),
            "LIFELINE_ASR": "wyoming",
            "LIFELINE_ASR_URL": "tcp://127.0.0.1:10300",
            "LIFELINE_ASR_LANGUAGE": "en",
            "LIFELINE_ASR_TIMEOUT": "42",
            "LIFELINE_LLM": "ollama",
            "LIFELINE_LLM_URL": "http://127.0.0.1:11434",
            "LIFELINE_LLM_MODEL": "llama3.2",
            "LIFELINE_LLM_TIMEOUT": "7",
            "LIFELINE_QDRANT_URL": "http://127.0.0.1:6333",
            "LIFELINE_QDRANT_COLLECTION": "mine",
            "LIFELINE_EMBEDDER": "ollama",
            "LIFELINE_EMBEDDER_MODEL": "nomic-embed-text",
            "LIFELINE_STREAM_IDLE_SECONDS": "5",
            "LIFELINE_UPLOAD_MAX_MB": "10",
        }
    )
    providers = settings.providers()
    assert providers.model_cache_dir == tmp_path / "models"
    assert (providers.asr_language, providers.asr_timeout, providers.llm_timeout) == ("en", 42.0, 7.0)
    assert (providers.qdrant_collection, providers.embedder_model) == ("mine", "nomic-embed-text")
    built = build_providers(providers)
    assert isinstance(built.transcriber, WyomingTranscriber)
    assert isinstance(built.extractor, OllamaExtractor)
    assert isinstance(built.vectors, QdrantVectors)
    assert settings.stream_idle_seconds == 5.0
    assert settings.upload_max_mb == 10.0


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LIFELINE_EMBEDDER": "word2vec"}, "LIFELINE_EMBEDDER"),
        ({"LIFELINE_STREAM_IDLE_SECONDS": "soon"}, "STREAM_IDLE_SECONDS"),
        ({"LIFELINE_UPLOAD_MAX_MB": "0"}, "UPLOAD_MAX_MB"),
        ({"LIFELINE_ASR_TIMEOUT": "-1"}, "ASR_TIMEOUT"),
    ],
)
def test_bad_values_are_refused_at_start(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(environ)


def test_the_provider_settings_are_documented() -> None:
    documented = " ".join(s.name for s in SETTINGS_HELP)
    for name in ("ASR_MODEL", "ASR_LANGUAGE", "QDRANT_COLLECTION", "EMBEDDER", "STREAM_IDLE_SECONDS"):
        assert f"LIFELINE_{name}" in documented

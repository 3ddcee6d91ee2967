"""Settings for the services, the breakers and the monitor, and what the runtime builds from them."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from lifeline.breakers import BreakerConfig, CircuitBreakers
from lifeline.config import Settings
from lifeline.domain import ConfigError
from lifeline.probes import (
    DeepgramProbe,
    DiskProbe,
    MongoProbe,
    OllamaProbe,
    OpenAIASRProbe,
    OpenAIProbe,
    QdrantProbe,
    StoreProbe,
    WyomingProbe,
    probes_from_settings,
)
from lifeline.runtime import HandlerContext, build_breakers, build_monitor, load_handlers, resolve_handlers


def test_breaker_defaults_and_overrides() -> None:
    settings = Settings.from_env(
        {
            "LIFELINE_BREAKER_MIN_CALLS": "3",
            "LIFELINE_BREAKER_OPEN_BASE": "10",
            "LIFELINE_BREAKER_ASR_SLOW_CALL": "120",
            "LIFELINE_BREAKER_LLM_SLOW_CALL": "0",
            "LIFELINE_BREAKER_MY_SERVICE_FAILURE_RATE": "0.9",
        }
    )
    assert settings.breaker == BreakerConfig(min_calls=3, open_base=10)
    assert settings.breakers == {
        "asr": BreakerConfig(min_calls=3, open_base=10, slow_call=120),
        "llm": BreakerConfig(min_calls=3, open_base=10, slow_call=None),
        "my_service": BreakerConfig(min_calls=3, open_base=10, failure_rate=0.9),
    }
    breakers = build_breakers(settings, store=None)  # type: ignore[arg-type]
    assert breakers.config("asr").slow_call == 120
    assert breakers.config("vectors") == settings.breaker
    assert "my_service" in breakers.names


@pytest.mark.parametrize(
    "environ",
    [
        {"LIFELINE_BREAKER_WINDOWS": "3"},
        {"LIFELINE_BREAKER_MIN_CALLS": "many"},
        {"LIFELINE_BREAKER_FAILURE_RATE": "2"},
        {"LIFELINE_BREAKER_MIN_CALLS": "30"},  # more than the window
        {"LIFELINE_ASR": "whisperx"},
        {"LIFELINE_ASR": "wyoming"},  # no URL
        {"LIFELINE_ASR": "deepgram"},  # no key
        {"LIFELINE_LLM": "ollama"},  # no URL
        {"LIFELINE_HEALTH_TIMEOUT": "0"},
    ],
)
def test_bad_settings_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(environ)


def test_the_default_settings_probe_only_this_host() -> None:
    settings = Settings.from_env({})
    assert (settings.asr, settings.llm, settings.health_interval) == ("embedded", "embedded", 30.0)
    probes = probes_from_settings(settings, store=None)  # type: ignore[arg-type]
    assert [type(p) for p in probes] == [StoreProbe, DiskProbe]


def test_each_configured_service_gets_its_native_probe() -> None:
    settings = Settings.from_env(
        {
            "LIFELINE_ASR": "wyoming",
            "LIFELINE_ASR_URL": "tcp://10.1.2.3:10300",
            "LIFELINE_LLM": "ollama",
            "LIFELINE_LLM_URL": "http://127.0.0.1:11434",
            "LIFELINE_LLM_MODEL": "llama3.2",
            "LIFELINE_QDRANT_URL": "http://127.0.0.1:6333",
            "LIFELINE_QDRANT_API_KEY": "secret",
            "LIFELINE_MONGODB_URL": "mongodb://db:27017",
            "LIFELINE_DISK_MIN_FREE_MB": "50",
        }
    )
    probes = {p.name: p for p in probes_from_settings(settings, store=None)}  # type: ignore[arg-type]
    assert isinstance(probes["asr"], WyomingProbe)
    assert (probes["asr"].host, probes["asr"].port) == ("10.1.2.3", 10300)
    assert isinstance(probes["llm"], OllamaProbe)
    assert probes["llm"].model == "llama3.2"
    assert isinstance(probes["vectors"], QdrantProbe)
    assert probes["vectors"].headers == {"api-key": "secret"}
    assert isinstance(probes["mongodb"], MongoProbe)
    assert isinstance(probes["disk"], DiskProbe)
    assert probes["disk"].min_free == 50 * 1024 * 1024
    assert probes["disk"].warn_free == 250 * 1024 * 1024
    assert MongoProbe("mongodb://u:p@db1:27018,db2:27019/x?tls=true")._address() == ("db1", 27018, True)

    other = Settings.from_env(
        {
            "LIFELINE_ASR": "deepgram",
            "LIFELINE_ASR_API_KEY": "dg",
            "LIFELINE_LLM": "openai",
            "LIFELINE_LLM_URL": "http://127.0.0.1:8000/v1",
            "LIFELINE_LLM_API_KEY": "sk",
        }
    )
    probes = {p.name: p for p in probes_from_settings(other, store=None)}  # type: ignore[arg-type]
    assert isinstance(probes["asr"], DeepgramProbe)
    assert probes["asr"].url == "https://api.deepgram.com"
    assert isinstance(probes["llm"], OpenAIProbe)
    assert probes["llm"].headers == {"Authorization": "Bearer sk"}
    asr = Settings.from_env({"LIFELINE_ASR": "openai", "LIFELINE_ASR_URL": "http://127.0.0.1:8001"})
    assert isinstance(probes_from_settings(asr, store=None)[-1], OpenAIASRProbe)  # type: ignore[arg-type]


def test_no_monitor_when_the_interval_is_zero() -> None:
    settings = Settings.from_env({"LIFELINE_HEALTH_INTERVAL": "0"})
    assert build_monitor(settings, store=None, breakers=None) is None  # type: ignore[arg-type]


def test_a_handler_factory_gets_the_runtime_context(tmp_path: Path) -> None:
    module = types.ModuleType("factory_app_for_test")
    seen: list[HandlerContext] = []

    async def handler(job: object) -> None:
        return None

    def handlers(context: HandlerContext) -> dict[str, object]:
        seen.append(context)
        return {"action_item": handler}

    def plain() -> dict[str, object]:
        return {"chunk": handler}

    module.handlers = handlers  # type: ignore[attr-defined]
    module.plain = plain  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        factory = load_handlers("factory_app_for_test:handlers")
        assert factory is handlers  # called later, once the store and the breakers exist
        assert load_handlers("factory_app_for_test:plain") == {"chunk": handler}
    finally:
        del sys.modules[module.__name__]
    breakers = CircuitBreakers(store=None)  # type: ignore[arg-type]
    context = HandlerContext(Settings(), None, breakers)  # type: ignore[arg-type]
    assert resolve_handlers(factory, context) == {"action_item": handler}
    assert seen == [context]
    with pytest.raises(ConfigError):
        resolve_handlers(lambda ctx: ["not", "a", "mapping"], context)  # type: ignore[arg-type,return-value]

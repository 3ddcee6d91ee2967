"""Settings values -> provider objects; bad settings fail at start-up with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.domain import ConfigError
from lifeline.providers import (
    DeepgramTranscriber,
    EmbeddedWhisper,
    Embedder,
    Extractor,
    MiniLMEmbedder,
    OllamaEmbedder,
    OllamaExtractor,
    OpenAIEmbedder,
    OpenAIExtractor,
    OpenAITranscriber,
    ProviderSettings,
    QdrantVectors,
    RuleBasedExtractor,
    Transcriber,
    VectorStore,
    WyomingTranscriber,
    build_embedder,
    build_extractor,
    build_providers,
    build_transcriber,
    build_vector_store,
)


async def test_the_defaults_are_embedded_and_load_nothing(tmp_path: Path) -> None:
    providers = build_providers(ProviderSettings(model_cache_dir=tmp_path / "models"))
    assert isinstance(providers.transcriber, EmbeddedWhisper)
    assert not providers.transcriber.loaded
    assert providers.transcriber.cpu_threads == 2
    assert providers.transcriber.compute_type == "int8"
    assert isinstance(providers.extractor, RuleBasedExtractor)
    assert providers.vectors is None  # no Qdrant: memories are searched by full text in the store
    assert providers.embedder is None
    assert not (tmp_path / "models").exists()
    assert isinstance(providers.transcriber, Transcriber)
    assert isinstance(providers.extractor, Extractor)
    await providers.aclose()


def test_each_transcriber() -> None:
    deepgram = build_transcriber(ProviderSettings(asr="deepgram", asr_api_key="k"))
    assert isinstance(deepgram, DeepgramTranscriber)
    assert (deepgram.url, deepgram.model) == ("https://api.deepgram.com", "nova-2")
    openai = build_transcriber(ProviderSettings(asr="OpenAI", asr_url="http://asr:8000/v1", asr_model="base"))
    assert isinstance(openai, OpenAITranscriber)
    assert (openai.url, openai.model, openai.api_key) == ("http://asr:8000", "base", None)
    wyoming = build_transcriber(ProviderSettings(asr="wyoming", asr_url="tcp://asr:10300", asr_language="en"))
    assert isinstance(wyoming, WyomingTranscriber)
    assert wyoming.language == "en"
    own = build_transcriber(ProviderSettings(asr_model="/models/small", asr_timeout=5))
    assert isinstance(own, EmbeddedWhisper)
    assert own.model_dir == Path("/models/small")


def test_each_extractor_and_embedder() -> None:
    ollama = build_extractor(ProviderSettings(llm="ollama", llm_model="qwen2.5"))
    assert isinstance(ollama, OllamaExtractor)
    assert (ollama.url, ollama.model) == ("http://localhost:11434", "qwen2.5")
    openai = build_extractor(ProviderSettings(llm="openai", llm_url="http://vllm:8000/v1", llm_api_key="k"))
    assert isinstance(openai, OpenAIExtractor)
    assert (openai.url, openai.model, openai.api_key) == ("http://vllm:8000", "gpt-4o-mini", "k")

    assert isinstance(build_embedder(ProviderSettings()), MiniLMEmbedder)
    same_server = build_embedder(
        ProviderSettings(llm="ollama", llm_url="http://gpu:11434", embedder="ollama")
    )
    assert isinstance(same_server, OllamaEmbedder)
    assert (same_server.url, same_server.model) == ("http://gpu:11434", "all-minilm")
    own = build_embedder(
        ProviderSettings(llm="ollama", embedder="openai", embedder_url="http://e:1", embedder_api_key="ek")
    )
    assert isinstance(own, OpenAIEmbedder)
    assert (own.url, own.api_key, own.model) == ("http://e:1", "ek", "text-embedding-3-small")
    assert isinstance(own, Embedder)


async def test_qdrant_brings_the_embedder_along() -> None:
    settings = ProviderSettings(qdrant_url="http://qdrant:6333", qdrant_api_key="q", qdrant_collection="mem")
    store = build_vector_store(settings)
    assert isinstance(store, QdrantVectors)
    assert (store.url, store.collection, store.api_key) == ("http://qdrant:6333", "mem", "q")
    assert isinstance(store, VectorStore)
    providers = build_providers(settings)
    assert isinstance(providers.embedder, MiniLMEmbedder)
    assert isinstance(providers.vectors, QdrantVectors)
    await providers.aclose()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (ProviderSettings(asr="google"), "asr='google' is not one of embedded, deepgram, openai, wyoming"),
        (ProviderSettings(asr="deepgram"), "needs asr_api_key"),
        (ProviderSettings(asr="wyoming"), "needs asr_url"),
        (ProviderSettings(asr="wyoming", asr_url="http://x:1"), "tcp://host:port"),
        (ProviderSettings(llm="llamacpp"), "llm='llamacpp' is not one of embedded, ollama, openai"),
        (ProviderSettings(embedder="bert", qdrant_url="http://q:6333"), "embedder='bert'"),
    ],
)
def test_bad_settings_fail_at_start_up(settings: ProviderSettings, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_providers(settings)


def test_keys_stay_out_of_the_repr() -> None:
    text = repr(ProviderSettings(asr_api_key="dg-secret", llm_api_key="sk-secret", qdrant_api_key="q-secret"))
    assert "secret" not in text
    assert "asr_api_key='***'" in text
    assert "embedder_api_key=None" in text

"""Build the providers from plain settings values (the CLI or app factory reads the environment).

``ProviderSettings`` mirrors the ``LIFELINE_ASR*``, ``LIFELINE_LLM*``, ``LIFELINE_EMBEDDER*`` and
``LIFELINE_QDRANT*`` variables; :func:`build_providers` turns it into objects. Nothing here reads
the environment. Unknown provider names and missing required values raise
:class:`~lifeline.domain.ConfigError` at start-up, not at the first job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lifeline.domain import ConfigError
from lifeline.providers.asr import (
    ASR_TIMEOUT,
    DeepgramTranscriber,
    EmbeddedWhisper,
    OpenAITranscriber,
    Transcriber,
    WyomingTranscriber,
)
from lifeline.providers.embeddings import Embedder, MiniLMEmbedder, OllamaEmbedder, OpenAIEmbedder
from lifeline.providers.llm import (
    LLM_TIMEOUT,
    Extractor,
    OllamaExtractor,
    OpenAIExtractor,
    RuleBasedExtractor,
)
from lifeline.providers.vectors import QdrantVectors, VectorStore

ASR_CHOICES = ("embedded", "deepgram", "openai", "wyoming")
LLM_CHOICES = ("embedded", "ollama", "openai")
EMBEDDER_CHOICES = ("embedded", "ollama", "openai")

DEFAULT_URLS = {
    "deepgram": "https://api.deepgram.com",
    "openai": "https://api.openai.com",
    "ollama": "http://localhost:11434",
}


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Which provider does what, and how to reach it. ``None`` means "the provider's default".

    ``embedder_url``/``embedder_api_key`` fall back to ``llm_url``/``llm_api_key`` when the embedder
    is of the same kind as the LLM (one Ollama or OpenAI server for both). ``model_cache_dir`` is
    where the packaged Whisper model is assembled (about 150 MB).
    """

    asr: str = "embedded"
    asr_url: str | None = None
    asr_api_key: str | None = None
    asr_model: str | None = None  # embedded: a CTranslate2 model directory of your own
    asr_language: str | None = None  # None: detect
    llm: str = "embedded"
    llm_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    embedder: str = "embedded"
    embedder_url: str | None = None
    embedder_model: str | None = None
    embedder_api_key: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_collection: str = "lifeline_memories"
    model_cache_dir: Path = field(default_factory=lambda: Path("data") / "models")
    asr_timeout: float = ASR_TIMEOUT
    llm_timeout: float = LLM_TIMEOUT
    asr_cpu_threads: int = 2

    def __repr__(self) -> str:  # keys stay out of logs
        hidden = {"asr_api_key", "llm_api_key", "embedder_api_key", "qdrant_api_key"}
        parts = []
        for name in self.__slots__:
            value = getattr(self, name)
            parts.append(f"{name}={'***' if name in hidden and value else value!r}")
        return f"ProviderSettings({', '.join(parts)})"


def _choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    value = value.strip().lower()
    if value not in choices:
        raise ConfigError(f"{kind}={value!r} is not one of {', '.join(choices)}")
    return value


def build_transcriber(s: ProviderSettings) -> Transcriber:
    kind = _choice("asr", s.asr, ASR_CHOICES)
    if kind == "embedded":
        return EmbeddedWhisper(
            cache_dir=s.model_cache_dir,
            model_dir=Path(s.asr_model) if s.asr_model else None,
            language=s.asr_language,
            cpu_threads=s.asr_cpu_threads,
        )
    if kind == "deepgram":
        if not s.asr_api_key:
            raise ConfigError("asr=deepgram needs asr_api_key (LIFELINE_ASR_API_KEY)")
        return DeepgramTranscriber(
            api_key=s.asr_api_key,
            url=s.asr_url or DEFAULT_URLS["deepgram"],
            model=s.asr_model or "nova-2",
            language=s.asr_language,
            timeout_seconds=s.asr_timeout,
        )
    if kind == "openai":
        return OpenAITranscriber(
            url=s.asr_url or DEFAULT_URLS["openai"],
            api_key=s.asr_api_key,
            model=s.asr_model or "whisper-1",
            language=s.asr_language,
            timeout_seconds=s.asr_timeout,
        )
    if not s.asr_url:
        raise ConfigError("asr=wyoming needs asr_url (LIFELINE_ASR_URL), e.g. tcp://127.0.0.1:10300")
    return WyomingTranscriber(
        url=s.asr_url, language=s.asr_language, model=s.asr_model, timeout_seconds=s.asr_timeout
    )


def build_extractor(s: ProviderSettings) -> Extractor:
    kind = _choice("llm", s.llm, LLM_CHOICES)
    if kind == "embedded":
        return RuleBasedExtractor()
    if kind == "ollama":
        return OllamaExtractor(
            url=s.llm_url or DEFAULT_URLS["ollama"],
            model=s.llm_model or "llama3.2",
            api_key=s.llm_api_key,
            timeout_seconds=s.llm_timeout,
        )
    return OpenAIExtractor(
        url=s.llm_url or DEFAULT_URLS["openai"],
        model=s.llm_model or "gpt-4o-mini",
        api_key=s.llm_api_key,
        timeout_seconds=s.llm_timeout,
    )


def build_embedder(s: ProviderSettings) -> Embedder:
    kind = _choice("embedder", s.embedder, EMBEDDER_CHOICES)
    if kind == "embedded":
        return MiniLMEmbedder()
    same_server = kind == s.llm.strip().lower()
    url = s.embedder_url or (s.llm_url if same_server else None) or DEFAULT_URLS[kind]
    api_key = s.embedder_api_key or (s.llm_api_key if same_server else None)
    if kind == "ollama":
        return OllamaEmbedder(url=url, model=s.embedder_model or "all-minilm", api_key=api_key)
    return OpenAIEmbedder(url=url, model=s.embedder_model or "text-embedding-3-small", api_key=api_key)


def build_vector_store(s: ProviderSettings) -> VectorStore | None:
    """Qdrant when ``qdrant_url`` is set; otherwise None (memories are searched by full text)."""
    if not s.qdrant_url:
        return None
    return QdrantVectors(url=s.qdrant_url, collection=s.qdrant_collection, api_key=s.qdrant_api_key)


@dataclass(slots=True)
class Providers:
    """Everything the pipeline stages call out to. ``vectors``/``embedder`` are None without Qdrant."""

    transcriber: Transcriber
    extractor: Extractor
    embedder: Embedder | None
    vectors: VectorStore | None

    async def aclose(self) -> None:
        for provider in (self.transcriber, self.extractor, self.embedder, self.vectors):
            if provider is not None:
                await provider.aclose()


def build_providers(s: ProviderSettings) -> Providers:
    """All providers for ``s``; the embedder is only built when there is a vector store to feed."""
    vectors = build_vector_store(s)
    return Providers(
        transcriber=build_transcriber(s),
        extractor=build_extractor(s),
        embedder=build_embedder(s) if vectors is not None else None,
        vectors=vectors,
    )

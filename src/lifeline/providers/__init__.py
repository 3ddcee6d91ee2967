"""The pipeline's external services, each a small Protocol with real clients and an embedded default.

=============  =====================================  ======================================
what           Protocol                                implementations
=============  =====================================  ======================================
speech->text   :class:`~.asr.Transcriber`              EmbeddedWhisper (default), Deepgram,
                                                       OpenAI-compatible, Wyoming
facts/tasks    :class:`~.llm.Extractor`                RuleBasedExtractor (default), Ollama,
                                                       OpenAI-compatible
text->vector   :class:`~.embeddings.Embedder`          MiniLMEmbedder (default), Ollama, OpenAI
vectors        :class:`~.vectors.VectorStore`          Qdrant (optional; no embedded store:
                                                       memories are searched by full text)
=============  =====================================  ======================================

Every client maps its failures onto the domain's errors: unreachable, timed out, HTTP 5xx/429
-> :class:`~lifeline.domain.TransientError`; other HTTP 4xx -> :class:`~lifeline.domain.PermanentError`.
"""

from lifeline.providers._http import MalformedResponse, ServiceError, ServiceRejected
from lifeline.providers.asr import (
    DeepgramTranscriber,
    EmbeddedWhisper,
    OpenAITranscriber,
    Segment,
    Transcriber,
    WyomingTranscriber,
    transcript_text,
)
from lifeline.providers.embeddings import Embedder, MiniLMEmbedder, OllamaEmbedder, OpenAIEmbedder
from lifeline.providers.factory import (
    Providers,
    ProviderSettings,
    build_embedder,
    build_extractor,
    build_providers,
    build_transcriber,
    build_vector_store,
)
from lifeline.providers.llm import (
    ActionItem,
    ActionStatus,
    Extractor,
    Memory,
    MemoryCategory,
    OllamaExtractor,
    OpenAIExtractor,
    RuleBasedExtractor,
)
from lifeline.providers.vectors import QdrantVectors, SearchHit, VectorPoint, VectorStore, point_id

__all__ = [
    "ActionItem",
    "ActionStatus",
    "DeepgramTranscriber",
    "EmbeddedWhisper",
    "Embedder",
    "Extractor",
    "MalformedResponse",
    "Memory",
    "MemoryCategory",
    "MiniLMEmbedder",
    "OllamaEmbedder",
    "OllamaExtractor",
    "OpenAIEmbedder",
    "OpenAIExtractor",
    "OpenAITranscriber",
    "ProviderSettings",
    "Providers",
    "QdrantVectors",
    "RuleBasedExtractor",
    "SearchHit",
    "Segment",
    "ServiceError",
    "ServiceRejected",
    "Transcriber",
    "VectorPoint",
    "VectorStore",
    "WyomingTranscriber",
    "build_embedder",
    "build_extractor",
    "build_providers",
    "build_transcriber",
    "build_vector_store",
    "point_id",
    "transcript_text",
]

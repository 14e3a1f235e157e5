"""The endpoint registry: each :class:`inferq.protocol.Endpoint`, its request schema and its
preparer, so the job API (``POST /v1/jobs``) validates any family's body without knowing it.

Audio takes a multipart upload, which a JSON job body cannot carry: its entries have no
preparer, and a JSON audio job is refused with a pointer to the multipart job routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from api.prepare import (
    Prepared,
    prepare_chat,
    prepare_completions,
    prepare_embeddings,
    prepare_rerank,
)
from api.queue import JobQueue
from api.responses import parse_body
from inferq.errors import bad_request
from inferq.openai.audio import TranscriptionForm, TranslationForm
from inferq.openai.chat import ChatCompletionRequest
from inferq.openai.completions import CompletionRequest
from inferq.openai.embeddings import EmbeddingRequest
from inferq.openai.rerank import RerankRequest
from inferq.protocol import Endpoint
from inferq.settings import Settings

# (validated body, queue, settings, job=...) -> (entry, the request the worker gets)
Preparer = Callable[..., Awaitable[Prepared]]


@dataclass(frozen=True)
class EndpointSpec:
    schema: type[BaseModel]
    prepare: Preparer | None  # None: not accepted as a JSON job body

    async def prepare_job(
        self, body: dict[str, Any], queue: JobQueue, settings: Settings
    ) -> Prepared:
        """A ``POST /v1/jobs`` body validated and prepared; errors name ``body.<field>``."""
        if self.prepare is None:
            raise bad_request(MULTIPART_ONLY, param="endpoint")
        return await self.prepare(parse_body(self.schema, body), queue, settings, job=True)


MULTIPART_ONLY = (
    "audio jobs take a multipart upload: POST /v1/jobs/audio/transcriptions "
    "or /v1/jobs/audio/translations"
)

ENDPOINTS: dict[Endpoint, EndpointSpec] = {
    Endpoint.EMBEDDINGS: EndpointSpec(EmbeddingRequest, prepare_embeddings),
    Endpoint.RERANK: EndpointSpec(RerankRequest, prepare_rerank),
    Endpoint.CHAT: EndpointSpec(ChatCompletionRequest, prepare_chat),
    Endpoint.COMPLETIONS: EndpointSpec(CompletionRequest, prepare_completions),
    Endpoint.AUDIO_TRANSCRIPTIONS: EndpointSpec(TranscriptionForm, None),
    Endpoint.AUDIO_TRANSLATIONS: EndpointSpec(TranslationForm, None),
}

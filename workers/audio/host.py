"""What a long job's coordinator and part pullers use of the worker's audio service.

A protocol (:class:`~workers.audio.service.AudioService` implements it), so that the service
can import them and they never import it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from inferq.openai.transcripts import TranscriptionJob
    from inferq.settings import Settings
    from workers.audio.batcher import WindowBatcher
    from workers.audio.gate import ModelGate
    from workers.audio.local_copy import LocalAudio
    from workers.audio.scripts import Scripts
    from workers.loaded import LoadedModel


class AudioHost(Protocol):
    settings: Settings
    redis: Any
    local: LocalAudio
    scripts: Scripts

    def send_task(self, name: str, *args: Any, **kwargs: Any) -> Any: ...

    def worker_name(self) -> str: ...

    def gate(self, model: LoadedModel) -> ModelGate: ...

    def batcher(self, model: LoadedModel) -> WindowBatcher | None: ...

    def pull_parts(
        self,
        job_id: str,
        model: LoadedModel,
        job: TranscriptionJob,
        plan: dict[str, Any],
        cancel_event: threading.Event,
        *,
        priority: int,
    ) -> None: ...

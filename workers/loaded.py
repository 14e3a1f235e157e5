"""A model as a worker serves it: its catalog entry, its handler, its family and batcher.

Its own module so that the serving modules can name it without importing the registry
(which imports them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from handlers.base import Family
from inferq.catalog import ModelEntry


@dataclass
class LoadedModel:
    entry: ModelEntry
    handler: Any
    load_seconds: float
    family: Family
    upstream: bool = False  # forwards to an OpenAI-compatible server (handlers.base.Upstream*)
    batcher: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.entry.name

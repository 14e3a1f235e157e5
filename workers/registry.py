"""The models a worker serves: weights located, handlers built once, warmed up."""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from inferq.catalog import CatalogError, ModelEntry
from inferq.protocol import Priority
from inferq.settings import Settings
from workers import metrics

log = logging.getLogger(__name__)


class MissingWeights(RuntimeError):
    pass


def import_handler(path: str) -> type:
    module, _, cls = path.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def ensure_weights(entry: ModelEntry, settings: Settings) -> str:
    """Where the handler loads from: a local directory, or the repo id (hub cache).

    With ``AUTO_DOWNLOAD_MODELS`` on, missing hub weights are downloaded into ``HF_HOME``;
    off, a missing model fails with the command that fetches it.
    """
    local = entry.weights_dir()
    if local is not None:
        if not local.is_dir():
            raise MissingWeights(f"model '{entry.name}': weights directory {local} does not exist")
        return str(local)
    if entry.skip_download or entry.is_proxy:
        return entry.hf_repo_id

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    kwargs = {"cache_dir": str(settings.hf_hub_cache), "revision": entry.revision}
    try:
        snapshot_download(entry.hf_repo_id, local_files_only=True, **kwargs)
    except LocalEntryNotFoundError:
        if not settings.auto_download_models:
            raise MissingWeights(
                f"model '{entry.name}' ({entry.hf_repo_id}) is not in {settings.hf_hub_cache} and "
                f"AUTO_DOWNLOAD_MODELS=0; fetch it with: "
                f"MODELS={entry.name} python scripts/download_models.py"
            ) from None
        log.info("downloading %s into %s", entry.hf_repo_id, settings.hf_hub_cache)
        snapshot_download(entry.hf_repo_id, **kwargs)
    return entry.hf_repo_id


@dataclass
class LoadedModel:
    entry: ModelEntry
    handler: Any
    load_seconds: float
    batcher: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.entry.name


def describe(handler: Any, entry: ModelEntry) -> dict[str, Any]:
    """What /v1/models shows about a served model (announced by the worker)."""
    info: dict[str, Any] = {
        "capabilities": list(getattr(handler, "capabilities", [])),
        "owned_by": entry.owned_by or getattr(handler, "owned_by", "local"),
        "hf_repo_id": entry.hf_repo_id,
    }
    if (dim := getattr(handler, "dim", None)) is not None:
        info["dimensions"] = int(dim)
    if (max_length := getattr(handler, "max_length", None)) is not None:
        info["max_input_tokens"] = int(max_length)
    return info


class ModelRegistry:
    def __init__(self) -> None:
        self.models: dict[str, LoadedModel] = {}

    def get(self, name: str) -> LoadedModel:
        return self.models[name]

    def load(self, entries: list[ModelEntry], settings: Settings) -> None:
        from handlers.base import resolve_device

        device = resolve_device(settings.model_device)
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        for entry in entries:
            if entry.name in self.models:
                continue
            started = time.perf_counter()
            try:
                handler_cls = import_handler(entry.handler)
            except (ImportError, AttributeError) as exc:
                raise CatalogError(f"model '{entry.name}': cannot import handler: {exc}") from exc
            source = ensure_weights(entry, settings)
            kwargs = entry.handler_kwargs()
            kwargs.pop("hf_repo_id", None)
            if "text-embedding" in getattr(handler_cls, "capabilities", []):
                kwargs.setdefault("batch_tokens", settings.embed_batch_tokens)
                kwargs.setdefault("max_batch_size", settings.embed_max_batch_size)
            handler = handler_cls(source, device, cache_dir=str(settings.hf_hub_cache), **kwargs)
            loaded = LoadedModel(entry, handler, time.perf_counter() - started)
            metrics.LOAD_SECONDS.labels(entry.name).set(loaded.load_seconds)
            loaded.info = describe(handler, entry)
            self._attach_batcher(loaded, settings)
            self._warm_up(loaded)
            self.models[entry.name] = loaded
            log.info(
                "loaded %s on %s in %.1fs (%s)",
                entry.name,
                device,
                loaded.load_seconds,
                ", ".join(loaded.info["capabilities"]),
            )

    @staticmethod
    def _attach_batcher(loaded: LoadedModel, settings: Settings) -> None:
        from workers.batching import Batcher

        handler, capabilities = loaded.handler, loaded.info["capabilities"]
        if getattr(handler, "is_proxy", False):
            return  # upstream proxies forward each job as it comes; the upstream batches
        if "chat-completion" in capabilities:
            from workers.chat import ChatScheduler

            loaded.batcher = ChatScheduler(handler, name=loaded.name)
            return
        if "text-embedding" in capabilities:
            forward, width = getattr(handler, "embed_batch", handler.embed), handler.dim
        elif "rerank" in capabilities:
            forward, width = handler.score_batch, None
        else:
            return
        loaded.batcher = Batcher(
            forward,
            width=width,
            batch_tokens=settings.embed_batch_tokens,
            max_batch_size=settings.embed_max_batch_size,
            max_padding=settings.embed_max_padding,
            min_batch_size=settings.embed_min_batch_size,
            name=loaded.name,
            urgent_priority=int(Priority.INTERACTIVE) if settings.embed_urgent_lane else None,
        )

    @staticmethod
    def _warm_up(loaded: LoadedModel) -> None:
        """One small call so the first real request does not pay for lazy initialisation."""
        if loaded.batcher is None:
            return
        if hasattr(loaded.batcher, "warm_up"):
            loaded.batcher.warm_up()
            return
        sample = ("warm up", "a document") if "rerank" in loaded.info["capabilities"] else "warm up"
        loaded.batcher.submit([sample], [8]).result()

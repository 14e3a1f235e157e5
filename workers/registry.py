"""The models a worker serves: weights located, handlers built once, warmed up."""

from __future__ import annotations

import importlib
import logging
import sys
import time
from typing import Any

from handlers.base import Family, optional
from handlers.cpuinfo import cpu_flags
from inferq.catalog import CatalogError, ModelEntry
from inferq.protocol import Priority
from inferq.settings import Settings
from workers import metrics, pass_threads
from workers.loaded import LoadedModel
from workers.pass_split import compiles_per_shape

log = logging.getLogger(__name__)

WARM_UP_SECONDS = 2.0  # the longest a model's load spends on lone calls of each length


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


def family_of(handler_cls: type, entry: ModelEntry) -> Family:
    """The endpoint family a handler class declares (``family``, see handlers/base.py)."""
    try:
        return Family(handler_cls.family)
    except (AttributeError, ValueError):
        raise CatalogError(
            f"model '{entry.name}': handler {entry.handler} declares no family "
            f"(set family = handlers.base.Family.X on the class)"
        ) from None


def describe(handler: Any, entry: ModelEntry) -> dict[str, Any]:
    """What /v1/models shows about a served model (announced by the worker)."""
    info: dict[str, Any] = {
        "capabilities": list(getattr(handler, "capabilities", [])),
        "owned_by": entry.owned_by or optional(handler, "owned_by"),
        "hf_repo_id": entry.hf_repo_id,
    }
    if (dim := getattr(handler, "dim", None)) is not None:
        info["dimensions"] = int(dim)
    if (structured := getattr(handler, "supports_structured_outputs", None)) is not None:
        info["structured_outputs"] = bool(structured)
    if (max_length := optional(handler, "max_length")) is not None:
        info["max_input_tokens"] = int(max_length)
    if (context := getattr(handler, "context_length", None)) is not None:
        info["context_length"] = int(context)  # bounds a chat request's text in the API
    dtype = getattr(handler, "dtype", None) or getattr(handler, "compute_type", None)
    if dtype is not None:
        info["dtype"] = str(dtype).removeprefix("torch.")
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
            family = family_of(handler_cls, entry)
            source = ensure_weights(entry, settings)
            kwargs = entry.handler_kwargs()
            kwargs.pop("hf_repo_id", None)
            if settings.model_dtype != "auto" and not entry.is_proxy:
                kwargs.setdefault("torch_dtype", settings.model_dtype)
            if family == Family.EMBEDDINGS:
                kwargs.setdefault("batch_tokens", settings.embed_batch_tokens)
                kwargs.setdefault("max_batch_size", settings.embed_max_batch_size)
            handler = handler_cls(source, device, cache_dir=str(settings.hf_hub_cache), **kwargs)
            loaded = LoadedModel(
                entry,
                handler,
                time.perf_counter() - started,
                family=family,
                upstream=bool(optional(handler, "upstream")),
            )
            metrics.LOAD_SECONDS.labels(entry.name).set(loaded.load_seconds)
            loaded.info = describe(handler, entry)
            flags = cpu_flags()
            per_shape = compiles_per_shape(device, loaded.info.get("dtype"), flags)
            self._attach_batcher(loaded, settings, device, per_shape, amx="amx_bf16" in flags)
            self._warm_up(loaded, settings, per_shape)
            self.models[entry.name] = loaded
            log.info(
                "loaded %s on %s in %.1fs (%s)",
                entry.name,
                device,
                loaded.load_seconds,
                ", ".join(loaded.info["capabilities"]),
            )
        if device == "cpu" and "torch" in sys.modules and (control := pass_threads.shared()):
            control.release()  # loading ran torch on an OpenMP team of this thread's own

    @staticmethod
    def _attach_batcher(
        loaded: LoadedModel, settings: Settings, device: str, per_shape: bool, *, amx: bool
    ) -> None:
        """The model's batcher; ``per_shape``: its forward compiles kernels per matrix shape
        (:func:`~workers.pass_split.compiles_per_shape`); ``amx``: the CPU has AMX for bf16."""
        from workers.batching import Batcher
        from workers.pass_split import auto_call_tokens, auto_shape_tokens

        handler = loaded.handler
        if loaded.upstream:
            return  # upstream proxies forward each job as it comes; the upstream batches
        if loaded.family == Family.CHAT:
            from workers.chat import ChatScheduler

            loaded.batcher = ChatScheduler(handler, name=loaded.name)
            return
        if loaded.family == Family.EMBEDDINGS:
            forward, width = handler.embed_batch, handler.dim
        elif loaded.family == Family.RERANK:
            forward, width = handler.score_batch, None
        else:
            return  # speech: the audio service (workers/audio/) gates the calls
        call_tokens = auto_call_tokens(settings.embed_call_tokens, device)
        loaded.batcher = Batcher(
            forward,
            width=width,
            batch_tokens=settings.embed_batch_tokens,
            max_batch_size=settings.embed_max_batch_size,
            max_padding=settings.embed_max_padding,
            min_batch_size=settings.embed_min_batch_size,
            call_tokens=call_tokens,
            shape_tokens=auto_shape_tokens(
                settings.embed_shape_tokens,
                call_tokens,
                per_shape=per_shape,
                amx=amx,
            ),
            name=loaded.name,
            urgent_priority=int(Priority.INTERACTIVE) if settings.embed_urgent_lane else None,
            **pass_threads.batcher_lanes(settings.embed_lanes, device),
        )

    @staticmethod
    def _warm_up(loaded: LoadedModel, settings: Settings, per_shape: bool) -> None:
        """One small call so the first real request does not pay for lazy initialisation; a
        lone call of every input length up to ``EMBED_WARM_UP_TOKENS`` too (auto: 64 where the
        forward compiles kernels per shape, else none; a setting applies anywhere), so that a
        lone request's first call of its length does not compile them (at most
        ``WARM_UP_SECONDS`` of calls: a slow handler gets the shortest lengths)."""
        from workers.batching import batch_inputs
        from workers.pass_split import auto_warm_up_tokens

        if loaded.batcher is None:
            return
        if hasattr(loaded.batcher, "warm_up"):
            loaded.batcher.warm_up()
            return
        most_tokens = max(
            1, auto_warm_up_tokens(settings.embed_warm_up_tokens, per_shape=per_shape)
        )
        rerank = loaded.family == Family.RERANK
        run: set[int] = set()
        started = time.perf_counter()
        for words in range(1, most_tokens + 1):
            text = " ".join(["a"] * words)  # a token a word in the usual vocabularies
            rows, counts = batch_inputs(loaded.handler, [("a", text) if rerank else text])
            if counts[0] > most_tokens and run:
                break
            if counts[0] not in run:
                run.add(counts[0])
                loaded.batcher.submit(rows, counts, counted=False).result()
            if time.perf_counter() - started > WARM_UP_SECONDS:
                break
        if len(run) > 1:
            log.info(
                "%s: lone calls of %d lengths (%d-%d tokens) in %.2fs",
                loaded.name,
                len(run),
                min(run),
                max(run),
                time.perf_counter() - started,
            )

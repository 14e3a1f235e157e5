"""Download the weights of the ``MODELS`` entries into ``HF_HOME`` (with progress bars).

    MODELS=BAAI/bge-m3,openai/whisper-tiny python scripts/download_models.py

Proxy, ``skip_download`` and local-directory/package entries are skipped. A name not in the
catalog fails with the closest matches.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inferq.catalog import CatalogError, load_catalog
from inferq.settings import get_settings


def main() -> int:
    settings = get_settings()
    if not settings.models:
        print("set MODELS to the comma-separated models to download", file=sys.stderr)
        return 2
    try:
        entries = load_catalog(settings.model_config_path).require(settings.models)
    except CatalogError as exc:
        print(exc, file=sys.stderr)
        return 2
    from huggingface_hub import snapshot_download

    for entry in entries:
        if entry.is_proxy or entry.skip_download or entry.local_dir or entry.weights_package:
            print(f"skip {entry.name}: weights are not fetched from the hub")
            continue
        print(f"downloading {entry.hf_repo_id} into {settings.hf_hub_cache}")
        path = snapshot_download(
            entry.hf_repo_id, cache_dir=str(settings.hf_hub_cache), revision=entry.revision
        )
        print(f"  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

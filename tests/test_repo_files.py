"""What the repository tracks: no symbolic link (a checkout's own paths, such as a helper's
``.venv -> /work/main/.venv``, mean nothing in another clone) and no virtual environment."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[tuple[str, str]]:
    """(mode, path) of every tracked file."""
    out = subprocess.run(
        ["git", "ls-files", "-s", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    rows = []
    for entry in filter(None, out.split("\0")):
        meta, path = entry.split("\t", 1)
        rows.append((meta.split()[0], path))
    return rows


def test_no_symlink_or_virtual_environment_is_tracked():
    """A tracked ``.venv`` link dangles in a fresh clone, where ``python -m venv .venv`` (the
    README's setup) then fails with FileExistsError."""
    tracked = _tracked()
    assert tracked, "git ls-files listed nothing"
    links = [path for mode, path in tracked if mode == "120000"]
    assert links == [], f"symbolic links tracked: {links}"
    venvs = [path for _, path in tracked if path.split("/")[0] in (".venv", "venv")]
    assert venvs == [], venvs


def test_a_venv_link_is_ignored_like_a_venv_directory():
    """``.venv/`` ignores only a directory: a worktree's link to a shared environment was
    committed by ``git add -A``."""
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin", "-v", "-n"],
        cwd=ROOT,
        input=b".venv\n",
        capture_output=True,
        check=False,
    )
    pattern = ignored.stdout.decode().split("\t")[0]
    assert pattern.endswith(":.venv"), f"{ROOT / '.gitignore'} ignores no '.venv' file: {pattern!r}"

"""Uploads copied from the blob store to local temporary files, once per worker and job."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from inferq.blobs import Blobs
from inferq.errors import ServiceError


@dataclasses.dataclass
class _Copy:
    users: int = 0
    path: Path | None = None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class LocalAudio:
    """Blob -> temporary file, downloaded once per worker while any thread uses it."""

    def __init__(self) -> None:
        self._copies: dict[str, _Copy] = {}
        self._lock = threading.Lock()
        self._dir: Path | None = None

    def _directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"inferq-audio-{os.getpid()}-"))
        return self._dir

    @contextlib.contextmanager
    def open(self, blobs: Blobs, blob_id: str, filename: str = "") -> Iterator[Path]:
        with self._lock:
            copy = self._copies.setdefault(blob_id, _Copy())
            copy.users += 1
        try:
            with copy.lock:
                if copy.path is None:
                    copy.path = self._download(blobs, blob_id, filename)
            yield copy.path
        finally:
            with self._lock:
                copy.users -= 1
                if copy.users == 0:
                    del self._copies[blob_id]
                    if copy.path is not None:
                        copy.path.unlink(missing_ok=True)

    def _download(self, blobs: Blobs, blob_id: str, filename: str) -> Path:
        if not blobs.exists(blob_id):
            raise ServiceError(
                500, "the uploaded audio is no longer stored (expired?)", code="audio_lost"
            )
        suffix = Path(filename).suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
        path = self._directory() / f"{blob_id}{suffix}"
        with open(path, "wb") as out:
            for piece in blobs.read(blob_id):
                out.write(piece)
        return path

    def cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

"""Writing a file whole or not at all: the one way every module writes what a reader may find later (model
directories, caches, reports, checkpoints' λ state, figures, JSONL).

A reader (or a resumed run) sees either the previous file or the complete new one, never a truncated one: the
content goes to a temporary file in the *same* directory (so the final step is a rename within one filesystem),
is flushed to disk, then ``os.replace`` puts it in place atomically. On any failure the temporary file is removed
and the old file is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (``torch.save``, safetensors'
    ``save_file``); it replaces ``path`` when the block ends without error. Parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """``with atomic_write(path) as f: f.write(...)``: an open file (``mode`` "w" text in UTF-8, or "wb") that
    becomes ``path`` when the block ends without error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as temporary, open(temporary, mode, encoding="utf-8" if mode == "w" else None) as file:
        yield file


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write one JSON object per line (UTF-8, non-ASCII kept as is) to ``path``, atomically."""
    with atomic_write(path) as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")

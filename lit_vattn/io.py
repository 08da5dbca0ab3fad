"""Atomic writes: every file the suite writes is whole or absent, never half-written.

The bytes go to a hidden temporary sibling (same directory, same suffix, so writers that infer a
format from the name still work), which is renamed onto the final name only when writing finished;
on an error the temporary file is removed and the previous file, if any, stays as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: <write tmp>``: ``p`` appears, complete, when the block ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_replace(tmp: Path, final: Path) -> None:
    """Move a completed file or directory into place; the old one stays until the new one is there."""
    if tmp.is_dir():  # a directory (a record, a sharded FSDP checkpoint): swap through a backup name
        backup = final.with_name(final.name + ".old")
        if final.exists():
            os.replace(final, backup)
        os.replace(tmp, final)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path, obj, indent: int = 2, **kw) -> None:
    write_text(path, json.dumps(obj, indent=indent, **kw))

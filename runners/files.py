"""Files written whole or not at all, and locks between processes.

A file is written to a temporary name of its own (unique to the writer) in its folder, then renamed over the old
one, so that a reader sees the old file or the new one, never a half-written one, and two writers of one file
never write into each other's temporary; an error (a full disk, Ctrl-C) removes the temporary and leaves the old
file as it was. A lock is ``flock`` on a file: the kernel lets it go with its process, so a crash leaves none.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; renamed onto ``path`` when the block ends, removed
    if it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write ``content`` (text or bytes) to ``path``, synced to disk, through ``replacing``."""
    with replacing(path) as temporary, open(temporary, "xb" if isinstance(content, bytes) else "x") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (an empty file, created if missing) while the block runs, so that parallel
    jobs never write the same data or cell at once; without ``wait``, yield False at once if another process
    holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        yield held


def is_locked(path: Path) -> bool:
    """Whether a process holds the lock ``path`` now (the lock is not taken, nor its file created)."""
    try:
        handle = open(path)
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False

"""Values that are costly to make (a video's model inputs, its vision features) kept by key, within a byte bound in
memory and, optionally, another on disk.

A value is a tensor, or a dict, list or tuple of them and of numbers, strings and None, as ``torch.save`` writes
and ``torch.load(weights_only=True)`` reads it back; its size is its tensors' bytes. A key is a digest of JSON parts
(``store_key``). Entries are admitted while they fit and never evicted: a sweep reads the same videos in the same
order once per cell, and keeping the first ones that fit serves that share of every pass, where dropping the least
recently used would drop each entry just before its next use and serve none. ``clear`` empties the memory.

On disk each entry is one file, ``<key>.pt`` in ``directory``, written under a temporary name, synced, and renamed
into place under an exclusive lock on ``directory/.lock`` once the bound is checked: processes that share the folder
(data-parallel ranks, a resumed run) see whole entries only, and stay within the bound together.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SUFFIX = ".pt"


def store_key(*parts) -> str:
    """The hex SHA-256 of ``parts`` as JSON (keys sorted; what JSON cannot write, by its ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def tensors_of(value) -> Iterator[torch.Tensor]:
    """The tensors inside ``value`` (a tensor, or a dict, list or tuple holding them)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_of(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from tensors_of(item)


def mapped(value, move):
    """``value`` with every tensor inside it replaced by ``move(tensor)``."""
    if isinstance(value, torch.Tensor):
        return move(value)
    if isinstance(value, dict):
        return {key: mapped(item, move) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mapped(item, move) for item in value)
    return value


def size_of(value) -> int:
    """The bytes of the tensors inside ``value``."""
    return sum(tensor.nbytes for tensor in tensors_of(value))


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (created if missing) for the block; it goes with the process."""
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def disk_used(directory: Path) -> int:
    """The bytes of the entries in ``directory`` (temporary files aside)."""
    return sum(entry.stat().st_size for entry in os.scandir(directory) if entry.name.endswith(SUFFIX))


class BoundedStore:
    """Entries by key, within ``memory_bytes`` in memory and, with a ``directory``, ``disk_bytes`` in files there.

    ``hits`` and ``misses`` count the ``get`` calls that found an entry and those that did not.
    """

    def __init__(self, memory_bytes: int, directory: str | Path | None = None, disk_bytes: int = 0) -> None:
        for name, bound in (("memory_bytes", memory_bytes), ("disk_bytes", disk_bytes)):
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
                raise ValueError(f"{name} must be a whole number of bytes, 0 or more, got {bound!r}")
        if (directory is None) != (disk_bytes == 0):
            raise ValueError(f"a disk store needs both a directory and disk_bytes > 0, got {directory!r}, {disk_bytes}")
        self.memory_bytes, self.disk_bytes = memory_bytes, disk_bytes
        self.directory = None if directory is None else Path(directory)
        self.entries: dict[str, object] = {}
        self.held = 0
        self.hits = self.misses = 0

    def get(self, key: str):
        """The entry under ``key`` (from memory, else from disk, then kept in memory where it fits), or None."""
        value = self.entries.get(key)
        if value is None and self.directory is not None:
            value = self.read(key)
            if value is not None:
                self.admit(key, value)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, value) -> None:
        """Keep ``value`` under ``key`` in memory and on disk, each where it fits and holds no entry under it yet."""
        self.admit(key, value)
        if self.directory is not None:
            self.write(key, value)

    def clear(self) -> None:
        """Drop the memory entries (the disk's stay)."""
        self.entries.clear()
        self.held = 0

    def admit(self, key: str, value) -> None:
        size = size_of(value)
        if key not in self.entries and self.held + size <= self.memory_bytes:
            self.entries[key] = value
            self.held += size

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def read(self, key: str):
        try:
            return torch.load(self.path(key), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as error:  # an entry another version wrote, or a damaged file: made again
            log.warning("unreadable cache entry %s (%s): ignored", self.path(key), error)
            return None

    def write(self, key: str, value) -> None:
        path = self.path(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        if path.exists() or disk_used(self.directory) + size_of(value) > self.disk_bytes:
            return
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(value, file)
                file.flush()
                os.fsync(file.fileno())
            with exclusive(self.directory / ".lock"):
                fits = disk_used(self.directory) + os.path.getsize(temporary) <= self.disk_bytes
                if fits and not path.exists():
                    os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

"""Files that appear whole or not at all: write to a temporary beside the target, flush, rename, flush the folder.

Weights, trainer state and every batch output are written this way, so a
crash or power loss leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process's file-creation mask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status") as f:  # Linux: no race with other threads creating files
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to disk."""
    with open(path, "r+b") as f:
        os.fsync(f.fileno())


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder: nothing more can be done there
        pass
    finally:
        os.close(fd)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make the finished ``tmp`` become ``path`` durably: fsync it, give it plain permissions, rename, fsync the folder.

    Permissions: what a plain ``open(path, "w")`` would give (0o666 less the
    umask; not a temporary file's 0o600, so a lab's other accounts can read
    shared weights and outputs). ``tmp`` may be a folder (a store such as
    OME-Zarr): every file and folder in it is flushed, and a folder already at
    ``path`` is moved aside, replaced, then deleted.
    """
    tmp, path = Path(tmp), Path(path)
    if tmp.is_dir():
        for folder, _, names in os.walk(tmp, topdown=False):
            for name in names:
                fsync_file(Path(folder) / name)
            fsync_folder(folder)
        os.chmod(tmp, 0o777 & ~current_umask())
        old = path.with_name(f".{path.name}.{os.getpid()}.replaced") if path.is_dir() else None
        if old is not None:
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_folder(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    fsync_file(tmp)
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)
    fsync_folder(path.parent)


@contextmanager
def atomic_write(path: str | os.PathLike, tmp: str | os.PathLike | None = None) -> Iterator[Path]:
    """Write a file all at once or not at all: ``with atomic_write(p) as tmp: save(tmp)``.

    The body writes to ``tmp``: by default a new file in ``path``'s folder (so
    the final rename stays on one file system and is atomic), or the path
    given (the batch tool names its temporaries after the process, so that
    stale ones can be recognised; a store format creates a folder there). On success the file is published
    (:func:`publish`: fsync, permissions, rename, fsync of the folder). If the
    body raises, ``path`` is left as it was and ``tmp`` is removed. The
    folder must exist.
    """
    path = Path(path)
    if tmp is None:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = name
    tmp = Path(tmp)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()

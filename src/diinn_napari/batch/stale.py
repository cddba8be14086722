"""The hidden files a batch leaves in an output folder, by name, and which of them are stale.

Names: ``.<output>.<host>-<pid>.partial`` (finished planes, resumable:
:mod:`.partial`), ``.<output>.<host>-<pid>.partial.<ext>`` (a companion of
that partial file, e.g. adapted weights), ``.<output>.<host>-<pid>.tmp<suffix>``
(the output being written, renamed into place when complete), ``.<output>.lock``
(held by the one process writing that output, :class:`OutputLock`). A file is
stale when the process that made it runs no longer on this machine (or it is
this process itself, left by an earlier failure of the same file). Files
from other machines are left alone: their processes cannot be checked from
here.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_HIDDEN = re.compile(r"^\.(?P<out>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.(?P<kind>partial|tmp)(?P<suffix>\.\w+)?$")
_OLD_PARTIAL = re.compile(r"^\.(?P<stem>.+)\.partial-(?P<pid>\d+)(?P<suffix>\.\w+)$")  # versions before 0.2


def partial_path(out: Path, pid: int | None = None) -> Path:
    """The partial file of output ``out`` made by process ``pid`` (default: this one) on this machine."""
    return out.with_name(f".{out.name}.{HOST}-{os.getpid() if pid is None else pid}.partial")


def tmp_path(out: Path) -> Path:
    """This process's temporary file for output ``out`` (the final write, renamed into place)."""
    return out.with_name(f".{out.name}.{HOST}-{os.getpid()}.tmp{out.suffix}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


@dataclass(frozen=True)
class Hidden:
    """One hidden batch file: ``kind`` is "partial", "companion" (of a partial file), "tmp" or "old"."""

    path: Path
    kind: str
    out_name: str
    stale: bool
    owner: Path | None = None  # a companion's partial file


def classify(path: Path) -> Hidden | None:
    """What a hidden batch file is, and whether it is stale; None if ``path`` is not one."""
    match = _HIDDEN.match(path.name)
    if match:
        pid = int(match["pid"])
        local = match["host"] == HOST
        stale = local and (pid == os.getpid() or not pid_alive(pid))
        kind = match["kind"]
        owner = None
        if kind == "partial" and match["suffix"]:
            kind, owner = "companion", path.with_name(path.name[: -len(match["suffix"])])
        return Hidden(path, kind, match["out"], stale, owner)
    match = _OLD_PARTIAL.match(path.name)
    if match:
        return Hidden(path, "old", match["stem"] + match["suffix"], not pid_alive(int(match["pid"])))
    return None


def hidden_files(out: Path) -> list[Hidden]:
    """The hidden batch files of output ``out`` in its folder."""
    if not out.parent.is_dir():
        return []
    found = (classify(p) for p in out.parent.iterdir())
    return [h for h in found if h is not None and h.out_name == out.name]


def remove(path: Path) -> None:
    """Delete a hidden file, or a hidden folder (the temporary of a store format such as OME-Zarr)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_files(out_dir: Path) -> list[Path]:
    """Delete the temporary files and the old-style partial files of processes that no longer run.

    Partial files of the current format (and their companions) are kept: they
    are resumed when their input is processed again.
    """
    removed = []
    if not out_dir.is_dir():
        return removed
    for path in out_dir.iterdir():
        if _LOCK.match(path.name) and remove_unheld_lock(path):
            removed.append(path)
            continue
        hidden = classify(path)
        if hidden is not None and hidden.kind in ("tmp", "old") and hidden.stale:
            remove(path)
            removed.append(path)
    return removed


def remove_stale(out: Path) -> None:
    """Delete every stale hidden file of output ``out`` (e.g. after a kill between the final rename and cleanup)."""
    for hidden in hidden_files(out):
        if hidden.stale:
            remove(hidden.path)


_LOCK = re.compile(r"^\..+\.lock$")


def remove_unheld_lock(path: Path) -> bool:
    """Delete a lock file no process holds (left by a killed run); True if it was deleted."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        if not _try_lock(fd):
            return False
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            path.unlink(missing_ok=True)
        return same
    finally:
        os.close(fd)


def lock_path(out: Path) -> Path:
    """The lock file of output ``out``: whoever holds a lock on it is the one writer of ``out`` and its partial file."""
    return out.with_name(f".{out.name}.lock")


class OutputLock:
    """An exclusive lock on one output, held by a live process (a context manager).

    Held from the check of an existing output to the rename of the new one and
    the removal of its partial file, so two batches never write one output and
    the check and the rename cannot interleave with another writer. The lock
    is an OS lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on the
    file ``.<output>.lock``: the OS releases it when its process ends, killed
    or not, so there is no stale lock to detect. ``on_wait(message)`` is called
    once when another process holds it; this one then waits.
    """

    def __init__(self, out: Path, on_wait=None):
        self.path, self.on_wait, self._fd = lock_path(out), on_wait, None

    def __enter__(self) -> OutputLock:
        waited = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                if not _try_lock(fd):
                    if not waited and self.on_wait is not None:
                        self.on_wait(f"{self.path.name[1:-5]} is being written by another process "
                                     f"({_owner(fd)}); waiting for it")
                    waited = True
                    _lock(fd)
                # the file may have been removed by the holder we waited for: then lock the new one
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if same:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{HOST}-{os.getpid()}\n".encode())
                    self._fd = fd
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def __exit__(self, *exc) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while locked: a waiter notices the removal and locks a new file
        except OSError:  # Windows: an open file cannot be removed; the next run removes it
            pass
        finally:
            os.close(fd)  # releases the lock


def _owner(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
    except (OSError, AttributeError):
        return "unknown"


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt
    import time

    def _try_lock(fd: int) -> bool:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _lock(fd: int) -> None:
        while not _try_lock(fd):
            time.sleep(0.5)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

"""The hidden files a batch leaves in an output folder, by name, and which of them are stale.

Names: ``.<output>.<host>-<pid>.partial`` (finished planes, resumable:
:mod:`.partial`), ``.<output>.<host>-<pid>.partial.<ext>`` (a companion of
that partial file, e.g. adapted weights), ``.<output>.<host>-<pid>.tmp<suffix>``
(the output being written, renamed into place when complete). A file is
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

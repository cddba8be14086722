"""The table a batch prints at the end: one row per file, then the counts."""

from __future__ import annotations

from .job import Result


def printable(text: str) -> str:
    """``text`` safe to print anywhere: bytes of a name that is not UTF-8 (kept as surrogates) become \\xNN escapes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def summary(results: list[Result]) -> str:
    """The table printed at the end of a run: file, status, output shape, seconds, note; then the counts."""
    rows = [("file", "status", "output shape", "seconds", "note")]
    rows += [(printable(r.path.name), r.status, "x".join(map(str, r.shape)) if r.shape else "-", f"{r.seconds:.1f}",
              printable(r.message))
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else "")
             for row in rows]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines.append(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    return "\n".join(lines)

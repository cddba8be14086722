"""Which source each training file comes from, and the validation split by whole sources.

A fine-tune is checked on files it does not train on. When those are drawn file by
file, other frames, views or tiles of the same recording sit on both sides, and the
check rewards what only holds for that recording: it cannot see a result that is
worse on other sources of the same kind of image (measured: a thermal fine-tune that
gained +0.16 dB on its own held-aside files and lost 0.35 dB on another camera's;
docs/finetuning.md). So the default split holds aside **whole sources**.

A file's source key is its path below its ``--data`` folder: the sub-folders, then the
file name cut into words at ``_``, ``-``, ``.`` and spaces, lower-cased, without the
trailing words that carry a digit (a frame, view, time point or tile number:
``marne_01``, ``apc_1_view_3``, ``t13``) and without the trailing digits of a first word
left alone (``rgb0`` -> ``rgb``). The sources of a folder are the groups of the
shortest leading part of the keys that splits its files into two or more groups:
``tno_triclobs_*`` and ``tno_fel_*`` are two sources (camera systems),
``brightfield__colicoords_*`` and ``phase__usiigaci_*`` two (labs and modalities),
``sub_a/*`` and ``sub_b/*`` two (sub-folders), ``tile_0001`` ... ``tile_0500`` one (then
files are drawn one by one, as before). No torch here.
"""

from __future__ import annotations

import fnmatch
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

WORD_BREAK = re.compile(r"[_\-.\s]+")
TRAILING_DIGITS = re.compile(r"\d+$")


def source_key(path: Path, root: Path | None = None) -> tuple[str, ...]:
    """The words that name ``path``'s source (see the module docstring); ``root``: its ``--data`` folder."""
    try:
        folders = path.relative_to(root).parts[:-1] if root is not None else ()
    except ValueError:  # not below root: the name alone
        folders = ()
    words = [w for w in WORD_BREAK.split(path.stem.lower()) if w]
    while len(words) > 1 and any(c.isdigit() for c in words[-1]):
        words.pop()
    if len(words) == 1 and not words[0].isdigit():
        words[0] = TRAILING_DIGITS.sub("", words[0])
    return (*(f.lower() for f in folders), *words)


def group_by_source(files: list[Path], root: Path | None = None) -> dict[str, list[Path]]:
    """The files by source, named by their shared key (one group when no part of the keys splits them)."""
    keys = {f: source_key(f, root) for f in files}
    longest = max((len(k) for k in keys.values()), default=0)
    for depth in range(1, longest + 1):
        groups: dict[str, list[Path]] = {}
        for f in files:
            groups.setdefault("_".join(keys[f][:depth]) or f.stem, []).append(f)
        if len(groups) >= 2:
            return groups
    return {"all": list(files)} if files else {}


@dataclass
class FileSplit:
    """Training and validation files, and one line per folder saying how they were split."""

    train: list[Path]
    val: list[Path]
    notes: list[str] = field(default_factory=list)


def split_by_source(groups: list[list[Path]], fraction: float, seed: int, hold_out: list[str] = (),
                    roots: list[Path] | None = None, by: str = "sources") -> FileSplit:
    """Hold aside files of each group (one per ``--data`` folder) for validation.

    * a folder with files matching a ``hold_out`` glob: those files, and only those;
    * else with ``by="sources"`` and two or more sources (:func:`group_by_source`): whole
      sources, in an order fixed by ``seed``, each taken while the held-aside files stay
      within ``fraction`` of the folder's files or the smallest source, whichever is more
      (so at least one source is held aside and a large one is passed over);
    * else (one source, or ``by="files"``): a ``fraction`` of the files, at least one of a
      folder of two or more.

    ``fraction`` 0 holds nothing aside automatically. A folder never gives all its files.
    """
    if by not in ("sources", "files"):
        raise ValueError(f"split by 'sources' or 'files', not {by!r}")
    train, val, notes = [], [], []
    for i, files in enumerate(groups):
        root = roots[i] if roots else None
        where = f"{root}: " if root is not None else ""
        forced = [f for f in files if any(fnmatch.fnmatch(f.name, pattern) for pattern in hold_out)]
        if forced and len(forced) < len(files):
            held = forced
            notes.append(f"{where}holding aside the {len(held)} files matching --hold-out")
        else:
            sources = group_by_source(files, root) if by == "sources" and not forced else {}
            rng = random.Random(seed * 1000 + i)
            if fraction > 0 and len(sources) >= 2:
                order = sorted(sources)
                rng.shuffle(order)
                room = max(fraction * len(files), min(len(s) for s in sources.values()))
                taken = []
                for name in order:
                    if sum(len(sources[t]) for t in taken) + len(sources[name]) <= room:
                        taken.append(name)
                held = [f for name in taken for f in sources[name]]
                notes.append(f"{where}holding aside whole sources for validation: "
                             + ", ".join(f"{name} ({len(sources[name])} files)" for name in sorted(taken))
                             + f"; training on {', '.join(sorted(set(sources) - set(taken)))}")
            else:
                order = sorted(files)
                rng.shuffle(order)
                n_val = min(len(order) - 1, max(1 if fraction > 0 else 0, round(len(order) * fraction)))
                held = order[:n_val]
                if len(files) > 1:
                    notes.append(f"{where}holding aside {len(held)} of {len(files)} files for validation"
                                 + (" (one source: no whole source to hold aside)" if by == "sources" else ""))
        val += held
        train += [f for f in files if f not in held]
    return FileSplit(sorted(train), sorted(val), notes)

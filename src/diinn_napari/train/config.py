"""The options of training: the command line, the recipe presets and the learning-rate schedule.

Plain data and checks, no training: :func:`build_parser` defines the command
line of ``python -m diinn_napari.finetune``, :func:`resolve_recipe` fills the
options left unset from the ``--recipe`` preset and checks every value,
:func:`parse_scales` reads a scale distribution, and :func:`learning_rate` /
:func:`side_paths` derive what the loop needs. No torch here: ``--help`` and
option errors come without loading it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

DESCRIPTION = "Train or fine-tune DIINN on a folder of images."


def parse_scales(text: str) -> tuple[str, list]:
    """Parse a scale distribution for training.

    * ``"2,3,4"`` -> ``("choice", [2, 3, 4])``: one of the listed scales;
    * ``"1-4"`` -> ``("uniform", [1, 4])``: uniform in [1, 4];
    * a mix of ranges and scales, each with an optional relative weight after
      ``:``, e.g. ``"1-4:0.85,4-8:0.15"`` -> ``("mix", [[1, 4, 0.85], [4, 8, 0.15]])``:
      a component is chosen by weight, then a scale uniformly within it.
    """
    text = text.strip()
    terms = [t.strip() for t in text.split(",") if t.strip()]
    if not terms:
        raise ValueError(f"no scale given in {text!r}; use e.g. '2,3,4', '1-4' or '1-4:0.85,4-8:0.15'")
    components = []
    for term in terms:
        body, _, weight = term.partition(":")
        lo_text, dash, hi_text = body.partition("-")
        try:
            lo = float(lo_text)
            hi = float(hi_text) if dash else lo
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"cannot read scale term {term!r} in {text!r}; use e.g. '2,3,4', '1-4' or '1-4:0.85,4-8:0.15'") from None
        if not 1 <= lo <= hi or not math.isfinite(hi):
            raise ValueError(f"scales must be finite and >= 1 with low <= high, got {term!r} in {text!r}")
        if not (w > 0 and math.isfinite(w)):
            raise ValueError(f"scale weights must be positive, got {term!r} in {text!r}")
        components.append([lo, hi, w, bool(dash), bool(weight)])
    if len(components) == 1 and components[0][3] and not components[0][4]:
        return "uniform", components[0][:2]
    if not any(c[3] or c[4] for c in components):
        return "choice", [c[0] for c in components]
    return "mix", [c[:3] for c in components]


class TrainingError(ValueError):
    """Training cannot start: bad options or no usable data (the message says what to change)."""


# Presets of the training recipe. Options left unset on the command line take
# their value from the chosen preset. "classic" is the recipe of the first bundled
# weights; "scientific" adds the statistics of scientific images (dark, sparse,
# offset/contrast/gamma, shot noise, anisotropic and large scales, point-sampled
# Z as isotropic reconstruction meets it) and the cheap
# gains of the SR literature (EMA of the weights, cosine schedule, Charbonnier).
RECIPES: dict[str, dict] = {
    "classic": dict(scales="1-4", schedule="step", ema=0.0, loss="l1", dark=0.0, sparse=0.0, jitter=0.0,
                    shot_noise=0.0, aniso=0.0, axial=0.0, consistency=0.0),
    "scientific": dict(scales="1-4:0.85,4-8:0.15", schedule="cosine", ema=0.999, loss="charbonnier", dark=0.25,
                       sparse=0.1, jitter=0.3, shot_noise=0.2, aniso=0.2, axial=0.15, consistency=0.0),
}


def _preset_help(name: str) -> str:
    return "default: from --recipe (" + ", ".join(f"{r}: {v[name]}" for r, v in RECIPES.items()) + ")"


class _HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help, unless the help already explains it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, argparse.SUPPRESS):
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return text + " (default: off)"
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The command-line options; :func:`train` takes the parsed namespace."""
    p = argparse.ArgumentParser(prog="python -m diinn_napari.finetune", description=DESCRIPTION,
                                formatter_class=_HelpFormatter)
    p.add_argument("--data", required=True, action="append", help="folder of training images (repeatable; required)")
    p.add_argument("--weights", default="default", help="start from: 'default', a bundled name, a path, or 'none' (scratch)")
    p.add_argument("--encoder", default="edsr-baseline", choices=["edsr-baseline", "rdn"], help="encoder when --weights none")
    p.add_argument("--variant", default="f", help="decoder variant a-f (paper Table 5) when --weights none")
    p.add_argument("--skip", default="bicubic", choices=["none", "bicubic"], help="global skip when --weights none")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 = grayscale/scientific, 3 = RGB")
    p.add_argument("--out", default="diinn-finetuned.safetensors", help="output weights file")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    p.add_argument("--epochs", type=float, default=None,
                   help="instead of --steps: passes over the training planes (default: unset, --steps counts)")
    p.add_argument("--recipe", default="scientific", choices=sorted(RECIPES),
                   help="preset for the options below that say 'from --recipe'")
    p.add_argument("--scales", default=None,
                   help="scale distribution: '2,3,4' (set), '1-4' (uniform range) or a weighted mix "
                        "'1-4:0.85,4-8:0.15'; " + _preset_help("scales"))
    p.add_argument("--aniso", type=float, default=None,
                   help="fraction of items with independent per-axis scales (half of them (s, 1)); " + _preset_help("aniso"))
    p.add_argument("--axial", type=float, default=None,
                   help="fraction of items degraded as the Z axis of a stack: scale (s, 1), axial blur (none to the "
                        "isotropic default) then point samples instead of antialiasing; " + _preset_help("axial"))
    p.add_argument("--patch", type=int, default=32, help="LR patch edge in pixels")
    p.add_argument("--batch", type=int, default=8, help="patches per step (per process)")
    p.add_argument("--queries", type=int, default=1024, help="HR pixels decoded per patch; 0 = the whole patch")
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate")
    p.add_argument("--schedule", default=None, choices=["step", "cosine"],
                   help="learning-rate schedule: 'step' halves at the --decay fractions, 'cosine' decays to 0 at the "
                        "last step; " + _preset_help("schedule"))
    p.add_argument("--decay", default="0.5,0.8", help="with --schedule step: fractions of the run at which the learning rate halves")
    p.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warm-up (useful with a fresh optimizer on trained weights)")
    p.add_argument("--ema", type=float, default=None,
                   help="decay of the exponential moving average of the weights that is validated and saved; 0 = off; "
                        + _preset_help("ema"))
    p.add_argument("--loss", default=None, choices=["l1", "charbonnier"], help="pixel loss; " + _preset_help("loss"))
    p.add_argument("--consistency", type=float, default=None,
                   help="weight of an LR-consistency loss (downsampled output vs LR) on one small item per step; "
                        + _preset_help("consistency"))
    p.add_argument("--dark", type=float, default=None,
                   help="fraction of crops taken as the darkest of several positions (background-dominated); " + _preset_help("dark"))
    p.add_argument("--sparse", type=float, default=None,
                   help="fraction of items made of synthetic sparse spots and hot pixels on a dim background; " + _preset_help("sparse"))
    p.add_argument("--jitter", type=float, default=None,
                   help="fraction of items with random gamma, contrast and offset (values at and below 0); " + _preset_help("jitter"))
    p.add_argument("--shot-noise", type=float, default=None,
                   help="fraction of items with Poisson-Gaussian noise on the LR input at sampled levels; " + _preset_help("shot_noise"))
    p.add_argument("--noise", type=float, default=0.0, help="max Gaussian noise sigma added to LR (0..1 units)")
    p.add_argument("--blur", type=float, default=0.0, help="max extra Gaussian blur sigma (HR px) before downsampling")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of files held aside for validation")
    p.add_argument("--hold-out", action="append", default=[], metavar="PATTERN",
                   help="also hold aside files whose name matches this glob (repeatable; default: none)")
    p.add_argument("--val-every", type=int, default=200, help="validate every N steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=0, help="seed of the file split, the sampling and the initial weights")
    p.add_argument("--deterministic", action="store_true", help="deterministic torch kernels")
    p.add_argument("--resume", action="store_true", help="continue from the *.state.pt beside --out")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop (resumably) after this many minutes (default: no limit)")
    return p


def resolve_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset from ``--recipe`` and check every value; raises :class:`TrainingError`."""
    args = argparse.Namespace(**vars(args))
    if args.recipe not in RECIPES:
        raise TrainingError(f"unknown recipe {args.recipe!r}; choose one of {sorted(RECIPES)}")
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for name in ("dark", "sparse", "jitter", "shot_noise", "aniso", "axial", "val_fraction"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise TrainingError(f"--{name.replace('_', '-')} is a fraction and must be between 0 and 1, got {value}")
    if not 0 <= args.ema < 1:
        raise TrainingError(f"--ema must be in [0, 1) (0 = off; 0.999 is typical), got {args.ema}")
    if args.consistency < 0:
        raise TrainingError(f"--consistency must be >= 0, got {args.consistency}")
    for name in ("steps", "patch", "batch", "val_every"):
        if getattr(args, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.queries < 0 or args.warmup < 0 or args.lr <= 0:
        raise TrainingError("--queries and --warmup must be >= 0 and --lr > 0")
    try:
        args.scale_spec = parse_scales(args.scales)
        args.milestones = [float(f) for f in args.decay.split(",") if f.strip()]
    except ValueError as err:
        raise TrainingError(f"bad --scales or --decay: {err}") from None
    return args


def learning_rate(args: argparse.Namespace, step: int, steps: int) -> float:
    """The learning rate at ``step``, a function of the step alone (so a resumed run may change --steps)."""
    if args.schedule == "cosine":
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(1, steps)))
    else:
        lr = args.lr * 0.5 ** sum(step >= int(steps * f) for f in args.milestones)
    if args.warmup:
        lr *= min(1.0, (step + 1) / args.warmup)
    return lr


def side_paths(out: Path) -> dict[str, Path]:
    """The files of a run beside ``--out``: best and last weights, the resumable state and the validation log."""
    stem = out.with_suffix("") if out.suffix == ".safetensors" else out
    return {
        "best": stem.with_suffix(".safetensors"),
        "last": stem.with_suffix(".last.safetensors"),
        "state": stem.with_suffix(".state.pt"),
        "log": stem.with_suffix(".log.jsonl"),
    }

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
# Z as isotropic reconstruction meets it, coarsely quantised dim data) and the cheap
# gains of the SR literature (EMA of the weights, cosine schedule, Charbonnier).
RECIPES: dict[str, dict] = {
    "classic": dict(scales="1-4", schedule="step", ema=0.0, loss="l1", dark=0.0, sparse=0.0, jitter=0.0,
                    shot_noise=0.0, aniso=0.0, axial=0.0, levels=0.0, consistency=0.0),
    "scientific": dict(scales="1-4:0.85,4-8:0.15", schedule="cosine", ema=0.999, loss="charbonnier", dark=0.25,
                       sparse=0.1, jitter=0.3, shot_noise=0.2, aniso=0.2, axial=0.15, levels=0.1,
                       consistency=0.0),
}


# Presets of the schedule, by what the run starts from (--preset; 'auto' picks by --weights).
# "finetune" was chosen by measurement on three domain shifts (docs/finetuning.md,
# benchmarks/domain_finetune.py): a trained model needs a rate well below the one that
# trains from scratch, a warm-up for its fresh optimizer, a schedule that ends when the
# run does, and the moving average of the weights; all layers at 2e-4 (warm-up 30) with the
# validation on whole sources and the 0.02 dB margin met the issue-22 gates on all three.
FINETUNE_MINUTES = 10.0  # the default time limit of a fine-tune (when neither --steps nor --epochs is given)
MAX_STEPS = 1_000_000  # a time-limited run's cap when --steps is not given
PRESETS: dict[str, dict] = {
    "scratch": dict(lr=5e-4, warmup=0, steps=2000, lr_floor=0.0, trainable="all", val_every=200),
    "finetune": dict(lr=2e-4, warmup=30, steps=None, lr_floor=0.0, trainable="all", val_every=100,
                     schedule="cosine", ema=0.999),
}


def _preset_help(name: str, table: dict[str, dict] = RECIPES) -> str:
    which = "--recipe" if table is RECIPES else "--preset"
    values = [f"{r}: {v[name]}" for r, v in table.items() if name in v]
    return f"default: from {which} (" + ", ".join(values) + ")"


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
    p.add_argument("--preset", default="auto", choices=["auto", *PRESETS],
                   help="defaults of the schedule and what to train: 'finetune' (a trained start: low rate with warm-up, "
                        "a cosine sized to --time-limit, EMA), 'scratch' (the from-scratch recipe); 'auto': 'scratch' "
                        "with --weights none, else 'finetune' (default: auto)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimisation steps; default: 2000 with --preset scratch; with --preset finetune as many as "
                        "fit in --time-limit (given with a time limit: the most it may run)")
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
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (peak); " + _preset_help("lr", PRESETS))
    p.add_argument("--lr-floor", type=float, default=None,
                   help="with --schedule cosine: the rate it ends at, as a fraction of --lr; " + _preset_help("lr_floor", PRESETS))
    p.add_argument("--train", dest="trainable", default=None, choices=["all", "decoder", "encoder-slow"],
                   help="what to train: all layers, the decoder only (encoder frozen), or the encoder at "
                        "--encoder-lr times the rate; " + _preset_help("trainable", PRESETS))
    p.add_argument("--encoder-lr", type=float, default=0.1, help="with --train encoder-slow: the encoder's rate as a fraction of --lr")
    p.add_argument("--schedule", default=None, choices=["step", "cosine"],
                   help="learning-rate schedule: 'step' halves at the --decay fractions, 'cosine' decays to --lr-floor at "
                        "the last step (with a time limit: the last step that fits, estimated from the measured step "
                        "time); default: 'cosine' with --preset finetune, else " + _preset_help("schedule")[9:])
    p.add_argument("--decay", default="0.5,0.8", help="with --schedule step: fractions of the run at which the learning rate halves")
    p.add_argument("--warmup", type=int, default=None,
                   help="steps of linear learning-rate warm-up (a fresh optimizer on trained weights needs it); "
                        + _preset_help("warmup", PRESETS))
    p.add_argument("--ema", type=float, default=None,
                   help="decay of the exponential moving average of the weights that is validated and saved; 0 = off; "
                        + _preset_help("ema", PRESETS) + ", else " + _preset_help("ema")[9:])
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
    p.add_argument("--levels", type=float, default=None,
                   help="fraction of items whose LR input is quantised to a few levels (log-uniform 8..64 over the "
                        "patch's own range, as dim 8- to 16-bit data is; the HR target stays smooth); " + _preset_help("levels"))
    p.add_argument("--noise", type=float, default=0.0, help="max Gaussian noise sigma added to LR (0..1 units)")
    p.add_argument("--blur", type=float, default=0.0, help="max extra Gaussian blur sigma (HR px) before downsampling")
    p.add_argument("--split", default="sources", choices=["sources", "files"],
                   help="how validation files are held aside in each --data folder: 'sources' holds aside whole sources "
                        "(sub-folders, or file names that differ before their frame/view/number suffix) where the folder "
                        "has two or more, so the check sees what carries to other sources; 'files' draws single files "
                        "(docs/finetuning.md)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of each folder's files held aside for validation (with --split sources: whole sources "
                        "up to this share, or the smallest source when that is larger)")
    p.add_argument("--val-patches", type=int, default=32,
                   help="validation crops drawn from the held-aside files (fixed by --seed; 0 = no validation)")
    p.add_argument("--val-crop", type=int, default=64, help="edge of a validation crop in HR pixels")
    p.add_argument("--hold-out", action="append", default=[], metavar="PATTERN",
                   help="hold aside the files whose name matches this glob instead of the automatic choice in their "
                        "folder (repeatable; default: none)")
    p.add_argument("--min-gain", type=float, default=0.02,
                   help="the least rise in dB of the mean gain over bicubic on the validation crops for a result to count "
                        "as better than the start (and be written)")
    p.add_argument("--val-every", type=int, default=None, help="validate every N steps; " + _preset_help("val_every", PRESETS))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=0, help="seed of the file split, the sampling and the initial weights")
    p.add_argument("--deterministic", action="store_true", help="deterministic torch kernels")
    p.add_argument("--resume", action="store_true", help="continue from the *.state.pt beside --out")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop (resumably) after this many minutes, validation included; default: 10 with --preset "
                        "finetune unless --steps or --epochs is given, else no limit")
    return p


def resolve_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset from ``--recipe`` and check every value; raises :class:`TrainingError`."""
    args = argparse.Namespace(**vars(args))
    if args.recipe not in RECIPES:
        raise TrainingError(f"unknown recipe {args.recipe!r}; choose one of {sorted(RECIPES)}")
    preset = getattr(args, "preset", "auto")
    if preset == "auto":
        preset = "scratch" if args.weights == "none" else "finetune"
    if preset not in PRESETS:
        raise TrainingError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    args.preset = preset
    if preset == "finetune" and args.steps is None and args.epochs is None and args.time_limit is None:
        args.time_limit = FINETUNE_MINUTES
    for table in (PRESETS[preset], RECIPES[args.recipe]):  # the command line, then the preset, then the recipe
        for key, value in table.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    if args.steps is None:
        args.steps = MAX_STEPS if args.time_limit else PRESETS["scratch"]["steps"]
    for name in ("dark", "sparse", "jitter", "shot_noise", "aniso", "axial", "levels", "val_fraction"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise TrainingError(f"--{name.replace('_', '-')} is a fraction and must be between 0 and 1, got {value}")
    if not 0 <= args.ema < 1:
        raise TrainingError(f"--ema must be in [0, 1) (0 = off; 0.999 is typical), got {args.ema}")
    if args.consistency < 0:
        raise TrainingError(f"--consistency must be >= 0, got {args.consistency}")
    for name in ("steps", "patch", "batch", "val_every", "val_crop"):
        if getattr(args, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.queries < 0 or args.warmup < 0 or args.lr <= 0 or args.val_patches < 0:
        raise TrainingError("--queries, --warmup and --val-patches must be >= 0 and --lr > 0")
    if not 0 <= args.lr_floor < 1 or not 0 < args.encoder_lr <= 1:
        raise TrainingError(f"--lr-floor must be in [0, 1) and --encoder-lr in (0, 1], got {args.lr_floor} and {args.encoder_lr}")
    if not args.min_gain >= 0:
        raise TrainingError(f"--min-gain must be >= 0 dB, got {args.min_gain}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise TrainingError(f"--time-limit must be > 0 minutes, got {args.time_limit}")
    try:
        args.scale_spec = parse_scales(args.scales)
        args.milestones = [float(f) for f in args.decay.split(",") if f.strip()]
    except ValueError as err:
        raise TrainingError(f"bad --scales or --decay: {err}") from None
    return args


def cosine_rate(base: float, step: int, horizon: int, warmup: int = 0, floor: float = 0.0) -> float:
    """The learning rate at ``step`` (0-based): ``warmup`` steps of linear rise, then a cosine to ``floor * base``.

    The cosine spans the whole ``horizon`` (steps in the run), warm-up included, so the
    rate reaches ``floor * base`` at the last step; a ``step`` past the horizon stays there.
    Shared by the trainer, :mod:`diinn_napari.train.self_adapt` and the isotropic adaptation.
    """
    progress = min(step, horizon) / max(1, horizon)
    rate = base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    return rate * warmup_factor(step, warmup)


def warmup_factor(step: int, warmup: int) -> float:
    """The linear warm-up's multiple of the rate at ``step`` (0-based): (step + 1) / warmup, at most 1."""
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


def learning_rate(args: argparse.Namespace, step: int, steps: int) -> float:
    """The learning rate at ``step`` of a run of ``steps`` (its horizon), a function of the two alone
    (so a resumed run may change --steps)."""
    if args.schedule == "cosine":
        return cosine_rate(args.lr, step, steps, args.warmup, getattr(args, "lr_floor", 0.0) or 0.0)
    return args.lr * 0.5 ** sum(step >= int(steps * f) for f in args.milestones) * warmup_factor(step, args.warmup)


def side_paths(out: Path) -> dict[str, Path]:
    """The files of a run beside ``--out``: best and last weights, the resumable state and the validation log."""
    stem = out.with_suffix("") if out.suffix == ".safetensors" else out
    return {
        "best": stem.with_suffix(".safetensors"),
        "last": stem.with_suffix(".last.safetensors"),
        "state": stem.with_suffix(".state.pt"),
        "log": stem.with_suffix(".log.jsonl"),
    }

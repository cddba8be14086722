"""Train or fine-tune DIINN on a folder of images.

    python -m diinn_napari.finetune --data tiles/

starts from the bundled default weights with the fine-tuning preset (a low
learning rate with warm-up, a cosine sized to a 10-minute time limit, EMA of the
weights; ``--preset``, docs/finetuning.md) and validates the start at step 0 on
fixed crops of held-aside files. ``diinn-finetuned.safetensors`` is written only
when the result beats the start on those crops; otherwise the run says so and
exits with status 3 (nothing written). Beside it: ``*.last.safetensors``
(latest), ``*.state.pt`` (optimizer and sampler state for ``--resume``; keep it
out of version control) and ``*.log.jsonl`` (every validation, step 0 first).
``--weights none`` trains from scratch (``--preset scratch``). ``--recipe``
picks the training recipe: ``scientific`` (default: dark, sparse and
intensity-jittered crops, shot noise, anisotropic and x4-x8 scales, EMA of the
weights, cosine schedule, Charbonnier loss) or ``classic`` (the first bundled
weights' recipe); any single option overrides the preset. Under
``torchrun --nproc_per_node N`` it trains with DistributedDataParallel (gloo on
the CPU, nccl on CUDA).
"""

from __future__ import annotations

import sys

# The implementation lives in diinn_napari.train (config, data, loop, cli); these names stay
# importable from here for scripts written against the first version.
from .train.cli import main
from .train.config import RECIPES, TrainingError, build_parser, learning_rate, resolve_recipe  # noqa: F401


def __getattr__(name: str):
    # the loop imports torch: only when asked for (``--help`` stays quick)
    if name in ("train", "validate", "split_files", "PointLoss", "train_step", "NOT_BETTER"):
        from .train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())

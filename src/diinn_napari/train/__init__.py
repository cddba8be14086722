"""Training and fine-tuning DIINN (``python -m diinn_napari.finetune``).

* :mod:`.config`: the options (command line, recipe presets, learning-rate schedule), no torch;
* :mod:`.data`: training planes and the LR/HR pair sampler with its augmentations;
* :mod:`.loop`: the loss, :func:`~.loop.train_step` (one optimisation step, also timed by
  ``benchmarks/bench_train.py``), validation and :func:`~.loop.train`;
* :mod:`.cli`: ``main()``, the only place that turns errors into exit codes.

Importing this package imports nothing else (and no torch).
"""

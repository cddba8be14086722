"""Training and fine-tuning DIINN (``python -m diinn_napari.finetune``).

* :mod:`.config`: the options (command line, recipe and schedule presets, learning-rate schedule), no torch;
* :mod:`.data`: training planes, the LR/HR pair sampler with its augmentations, the validation crops;
* :mod:`.optim`: the shared optimisation helpers (optimizer over what to train, warm-up +
  cosine rate, EMA of the weights, the clock that sizes a time-limited schedule);
* :mod:`.step`: the loss and :func:`~.step.train_step` (one optimisation step, also timed by
  ``benchmarks/bench_train.py``);
* :mod:`.validation`: the file split, validation crops' scores, the keep-only-if-better rule;
* :mod:`.loop`: :func:`~.loop.train` with its parts;
* :mod:`.self_adapt`: :func:`~.self_adapt.adapt_to_image`, self-supervised adaptation to one image;
* :mod:`.cli`: ``main()``, the only place that turns errors into exit codes.

Importing this package imports nothing else (and no torch).
"""

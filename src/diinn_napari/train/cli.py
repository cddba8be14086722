"""``python -m diinn_napari.finetune``: the command line of training.

The only place that turns training's errors into a message and an exit code;
torch loads after the options parsed, so ``--help`` and option errors are quick.
"""

from __future__ import annotations

import logging
import sys

from .config import TrainingError, build_parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: the only place that turns errors into an exit code (2) and a message.

    Exit status: 0 done, 2 bad options or data, 3 the result did not beat the start
    (nothing written at ``--out``), 130 interrupted (resumable).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..weights import WeightsError  # torch loads here
    from .loop import train

    try:
        return train(args)["exit_code"]
    except (TrainingError, WeightsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

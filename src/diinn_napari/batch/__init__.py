"""Batch super-resolution of image files, keeping axes, dtype and metadata (``python -m diinn_napari.batch``).

Data flows one way, one module per step:

* :mod:`.cli`: the command line (argument groups), checks that would fail every file;
* :mod:`.inputs`: which files, and each one's output path;
* :mod:`.runners`: the files in this process, a process pool or a dask cluster;
* :mod:`.process`: one file, start to finish (plane-wise or, ``--isotropic``, volume-wise units);
* :mod:`.plan`: what one file becomes (output info, isotropic plan, settings record);
* :mod:`.record`: comparing settings records; :mod:`.partial`: the resumable partial file;
  :mod:`.stale`: hidden files of dead processes; :mod:`.summary`: the closing table.

Files are read and written through :mod:`diinn_napari.io`. Library use::

    from diinn_napari import RunSettings
    from diinn_napari.batch import Settings, run_batch, summary
    results = run_batch(paths, Settings("up/", RunSettings(scale=2)))
"""

from .cli import build_parser, main
from .inputs import check_output_names, collect_inputs, output_path
from .job import FUSIONS, Result, Settings
from .plan import FilePlan, plan_file
from .process import process_file
from .runners import run_batch
from .stale import remove_stale_files
from .summary import summary

__all__ = ["FUSIONS", "FilePlan", "Result", "Settings", "build_parser", "check_output_names", "collect_inputs", "main",
           "output_path", "plan_file", "process_file", "remove_stale_files", "run_batch", "summary"]

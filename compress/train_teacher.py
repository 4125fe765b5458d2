"""Train a DRSformer teacher from a recipe, on one CPU, one GPU or many GPUs.

    accelerate launch compress/train_teacher.py recipes/teacher_tiny.yaml [--set train.steps=100] [--resume]
    python compress/train_teacher.py recipes/teacher_tiny.yaml            # same loop, one process

Checkpoints go to ``<out_dir>/<name>/`` (``state/`` for ``--resume``, ``best/`` and ``final/`` as
``save_pretrained`` folders, ``summary.json``). Two CPU processes on one machine (see ``../shared/INSTALL.md``):
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no
--dynamo_backend no --main_process_port 0 compress/train_teacher.py RECIPE``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from accelerate.utils import set_seed

from compress.recipe import Recipe, load_recipe
from compress.console import cli
from compress.data import check_data
from compress.train import FINAL, claim_run_dir, fit_recipe, make_accelerator, release_run_dir
from drsformer import DRSformer


def train_teacher(recipe: Recipe, resume: bool = False, show: bool = True, overwrite: bool = False) -> Path:
    """Train ``recipe``'s model from scratch; returns the ``save_pretrained`` folder of the final teacher."""
    accelerator = make_accelerator(recipe.train, recipe.run_dir)
    check_data(recipe.data)
    claim_run_dir(recipe.run_dir, recipe, resume=resume, overwrite=overwrite,
                  main_process=accelerator.is_main_process)  # fmt: skip
    try:
        set_seed(recipe.seed)
        summary = fit_recipe(DRSformer(recipe.model.config()), recipe, accelerator, resume=resume, show=show)
        accelerator.print(json.dumps({k: v for k, v in asdict(summary).items() if k != "val"}, indent=1))
        accelerator.wait_for_everyone()
    finally:
        release_run_dir(recipe.run_dir)
    return recipe.run_dir / FINAL


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true", help="continue from <run dir>/state if it exists")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in the run directory")
    args = parser.parse_args(argv)
    train_teacher(load_recipe(args.recipe, args.overrides), resume=args.resume, overwrite=args.overwrite)


if __name__ == "__main__":
    cli(main)

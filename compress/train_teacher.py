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

from compress.data import training_patches, validation_sets
from compress.recipe import Recipe, load_recipe
from compress.train import FINAL, fit, make_accelerator, write_summary
from drsformer import DRSformer


def train_teacher(recipe: Recipe, resume: bool = False, show: bool = True) -> Path:
    """Train ``recipe``'s model from scratch; returns the ``save_pretrained`` folder of the final teacher."""
    run_dir = recipe.run_dir
    accelerator = make_accelerator(recipe.train, run_dir)
    set_seed(recipe.seed)
    model = DRSformer(recipe.model.config())
    data = training_patches(recipe.data, recipe.seed)
    summary = fit(
        model,
        recipe.train,
        data,
        accelerator,
        run_dir,
        seed=recipe.seed,
        heaviness=recipe.data.heaviness,
        val_sets=validation_sets(recipe.data),
        workers=recipe.data.workers,
        resume=resume,
        recipe=recipe.model_dump(mode="json"),
        show=show,
    )
    if accelerator.is_main_process:
        write_summary(summary, run_dir / "summary.json")
        accelerator.print(json.dumps({k: v for k, v in asdict(summary).items() if k != "val"}, indent=1))
    accelerator.wait_for_everyone()
    return run_dir / FINAL


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true", help="continue from <run dir>/state if it exists")
    args = parser.parse_args(argv)
    train_teacher(load_recipe(args.recipe, args.overrides), resume=args.resume)


if __name__ == "__main__":
    main()

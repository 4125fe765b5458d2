"""One recipe -> one recorded result: teacher -> prune -> fit -> evaluate -> record -> plots.

    python compress/run.py recipes/prune50_distill.yaml [--set train.steps=500] [--scratch]
    accelerate launch compress/run.py recipes/prune50_distill.yaml

A recipe without a ``teacher`` trains its model from scratch (a teacher run; its record is the star of
the Pareto plots). The record goes to ``results/runs/<name>[_seed<N>].json`` (``results/scratch/`` for
uncommitted code or ``--scratch``); a failed run writes none.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from rich.console import Console

from compress.console import UserError, cli
from compress.data import (
    PairedImages,
    SyntheticPairs,
    check_data,
    check_writable_folder,
    image_files,
    real_photos,
    training_patches,
)
from compress.distill import Distiller, add_lora
from compress.evaluate import evaluate, load_model
from compress.measure import count_macs, count_params, latency_ms
from compress.plots import regenerate
from compress.prune import prune
from compress.recipe import Recipe, load_recipe
from compress.results import RESULTS, environment, git_state, record_path, write_record
from compress.train import FINAL, claim_run_dir, fit_recipe, l1_loss, make_accelerator, release_run_dir
from compress.train_teacher import train_teacher
from drsformer import DRSformer


def load_teacher(recipe: Recipe, console: Console) -> DRSformer:
    """The recipe's teacher: a saved model, an official .pth, or the final model of a teacher recipe."""
    spec = recipe.teacher
    if spec.path is not None:
        return load_model(spec.path, spec.preset)
    teacher_recipe = load_recipe(spec.recipe)
    final = teacher_recipe.run_dir / FINAL
    if not (final / "model.safetensors").is_file():
        console.print(f"[bold]teacher[/] {final} not found: training {spec.recipe} first")
        train_teacher(teacher_recipe, resume=True)
    return DRSformer.from_pretrained(final)


def calibration(recipe: Recipe, count: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(rainy, clean) training pairs for Taylor importance (fixed seed, not the training stream's)."""
    patches, _ = training_patches(recipe.data, recipe.seed + 7)
    items = [[patches[i * batch + j] for j in range(batch)] for i in range(count)]
    return [tuple(torch.stack([item[key] for item in group]) for key in ("rainy", "clean")) for group in items]


def pruned(recipe: Recipe, teacher: DRSformer):
    """(student, report): ``teacher`` pruned as ``recipe.prune`` says (Taylor: on a few of its training batches)."""
    p = recipe.prune
    batches = calibration(recipe, p.calibration_batches, p.calibration_batch_size) if p.criterion == "taylor" else []
    return prune(teacher, p, batches)


def student_of(recipe: Recipe, teacher: DRSformer | None, console: Console):
    """(student, prune report or None): pruned from the teacher, or random init of the pruned config."""
    if teacher is None:
        return DRSformer(recipe.model.config()), None
    if recipe.prune is None:
        return _copy(teacher), None  # distillation into a copy of the teacher
    started = time.perf_counter()
    student, report = pruned(recipe, teacher)
    console.print(report.table())
    console.print(f"pruned in {time.perf_counter() - started:.1f} s")
    if recipe.student_init == "random":
        student = DRSformer(student.config)  # same config, fresh weights: the scratch baseline
    return student, report


def _copy(model: DRSformer) -> DRSformer:
    clone = DRSformer(model.config)
    clone.load_state_dict(model.state_dict())
    return clone


def run_recipe(
    recipe: Recipe,
    stem: str | None,
    console: Console,
    resume: bool = False,
    scratch: bool = False,
    results: Path = RESULTS,
    overwrite: bool = False,
) -> dict:
    """Run every stage of ``recipe`` (teacher, prune, fit, evaluate, record); returns the record (written unless
    ``stem`` is None). Inputs are checked first: data folders, teacher checkpoint, run and results folders."""
    started = time.perf_counter()
    run_dir = recipe.run_dir
    accelerator = make_accelerator(recipe.train, run_dir)
    check_inputs(recipe, results if stem is not None else None)
    claim_run_dir(run_dir, recipe, resume=resume, overwrite=overwrite, main_process=accelerator.is_main_process)
    try:
        return _run(recipe, stem, console, accelerator, started, resume, scratch, results)
    finally:
        release_run_dir(run_dir)


def eval_sets(recipe: Recipe) -> dict:
    """The paired sets a record scores: ``eval.paired`` and the fixed synthetic sets of ``eval.synthetic``."""
    synthetic = {name: SyntheticPairs(s.backgrounds, s.heaviness, s.seed, s.crop)
                 for name, s in recipe.eval.synthetic.items()}  # fmt: skip
    return {**recipe.eval.paired, **synthetic}


def describe_sources(data) -> str:
    sources, parts = data.training_sources(), []
    for s in sources:
        if s.kind == "synthetic":
            what = "synthetic rain on " + ", ".join(s.backgrounds)
        else:
            what = f"pairs from {s.root if s.kind == 'paired' else s.path}"
        parts.append(what + (f" (weight {s.weight:g})" if len(sources) > 1 else ""))
    return "; ".join(parts)


def check_inputs(recipe: Recipe, results: Path | None) -> None:
    """Everything a run reads or writes that can be checked before work starts."""
    check_data(recipe.data)
    for root in recipe.eval.paired.values():
        PairedImages(root)  # layout and pairing errors name the folder and files
    for folder in recipe.eval.real.values():
        real_photos([folder], recipe.eval.real_split, "eval.real_split")
    for s in recipe.eval.synthetic.values():
        image_files(s.backgrounds)
    if recipe.teacher is not None and recipe.teacher.path is not None:
        path = Path(recipe.teacher.path)
        if not path.exists():
            raise UserError(f"teacher.path: {path} does not exist; give a save_pretrained folder or an official .pth")
    if recipe.teacher is not None and recipe.teacher.recipe is not None:
        teacher = load_recipe(recipe.teacher.recipe)
        final = teacher.run_dir / FINAL
        if teacher.teacher is not None and not (final / "model.safetensors").is_file():
            # a student or a continued teacher: train_teacher (which trains a missing teacher) cannot make it
            raise UserError(f"teacher.recipe: {recipe.teacher.recipe} has not been run ({final} not found) and "
                            f"learns from a teacher itself; run it first: python compress/run.py "
                            f"{recipe.teacher.recipe}")  # fmt: skip
    if results is not None:
        check_writable_folder(results, "--results")


def _run(recipe, stem, console, accelerator, started, resume, scratch, results) -> dict:
    run_dir = recipe.run_dir
    set_seed(recipe.seed)
    teacher = load_teacher(recipe, console) if recipe.teacher is not None else None
    student, report = student_of(recipe, teacher, console)
    loss_fn = l1_loss  # a teacher, a fine-tuned student, LoRA alone: ground truth only
    if recipe.distill is not None:
        kept, attention = (None, None) if report is None else (report.kept_channels, report.kept_attention)
        loss_fn = Distiller(teacher, student, recipe.distill, accelerator.device, kept, attention)
    if recipe.lora is not None:
        student = add_lora(student, recipe.lora)
    summary = fit_recipe(student, recipe, accelerator, loss_fn=loss_fn, resume=resume)
    accelerator.wait_for_everyone()  # the main process has written final/
    final = DRSformer.from_pretrained(run_dir / FINAL)
    if accelerator.is_main_process:
        console.print("[bold]evaluate[/]")
    # every process scores its share of the images on its device; all get the gathered result
    scored = final
    if recipe.train.compile and recipe.eval.tile is None:  # tiling swaps methods per module: it runs eager
        scored = torch.compile(final.to(accelerator.device), dynamic=True, **recipe.train.compile_options())
    sets = evaluate(scored, eval_sets(recipe), recipe.eval.real, recipe.eval.tile, recipe.eval.limit,
                    accelerator=accelerator, real_split=recipe.eval.real_split)  # fmt: skip
    final = final.cpu()
    bad = [f"{name}.{metric}" for name, row in sets.items() for metric, value in row.items()
           if isinstance(value, float) and not math.isfinite(value)]  # fmt: skip
    if bad:
        raise UserError(f"{run_dir / FINAL}: evaluation gave non-finite scores ({', '.join(bad)}): the model's output "
                        "is not finite; no record was written. Retrain with a lower train.lr")  # fmt: skip
    record = {}
    if accelerator.is_main_process:
        env = environment()
        record = {
            "stem": stem or recipe.name,
            "role": "teacher" if recipe.teacher is None else "student",
            "recipe": recipe.model_dump(mode="json"),
            **git_state(),
            **env,
            "config": final.config.to_dict(),
            "params_m": count_params(final) / 1e6,
            "gmacs_256": count_macs(final.config, 256, 256) / 1e9,
            "latency_ms": latency_ms(final, recipe.eval.latency_size, recipe.eval.latency_repeats),
            "latency_size": recipe.eval.latency_size,
            "checkpoint_bytes": (run_dir / FINAL / "model.safetensors").stat().st_size,
            "sets": sets,
            "published": recipe.eval.published,  # the paper's figures for these sets, if the recipe carries them
            "train": {
                "steps": summary.steps,
                "seconds": summary.seconds,
                "patches_per_s": summary.patches_per_s,
                "best_psnr_y_db": summary.best_psnr_y_db,
                "processes": summary.ranks,
                "autocast": summary.autocast,  # [first step, precision] per stretch ("no": fp32)
                "val": summary.val,
            },  # fmt: skip
            "prune": None if report is None else report.rows(),
            "scale": f"{recipe.model.preset if recipe.teacher is None else 'student'}; {summary.steps} steps x "
            f"{recipe.train.batch_size} patches of {recipe.data.patch_size}px; {describe_sources(recipe.data)}; "
            f"{env['device']}",
            "status": "ok",
            "total_seconds": time.perf_counter() - started,
        }
        if recipe.export is not None:
            record["deployed"] = deploy(recipe, final, run_dir)
        if stem is not None:
            path = write_record(record, record_path(stem, scratch or record["dirty"], results))
            console.print(f"wrote {path}")
            if not (scratch or record["dirty"]):
                for written in regenerate(results):
                    console.print(f"wrote {written}")
    accelerator.wait_for_everyone()
    return record


def deploy(recipe: Recipe, final: DRSformer, run_dir: Path) -> dict:
    """The recipe's ``export`` stage: the final model exported, checked on the eval sets and timed."""
    from compress.export import DeployedModel, export

    e = recipe.export
    out = run_dir / "deploy" / f"model_{e.precision}{'.onnx' if e.to == 'onnx' else '.xml'}"
    checked = export(final, e.to, out, e.precision, checks=dict(recipe.eval.paired), limit=e.check_limit)
    deployed = DeployedModel(out)
    return {
        "artefact": str(out), "backend": deployed.backend, "precision": e.precision, "checks": checked["checks"],
        "latency_ms": latency_ms(deployed, recipe.eval.latency_size, recipe.eval.latency_repeats),
    }  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true", help="continue the run's training state")
    parser.add_argument("--scratch", action="store_true", help="write the record to results/scratch/")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results folder (runs/, scratch/, plots)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in the run directory")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    run_recipe(recipe, recipe.stem, Console(), resume=args.resume, scratch=args.scratch, results=args.results,
               overwrite=args.overwrite)  # fmt: skip


if __name__ == "__main__":
    cli(main)

"""The embedded default job: the whole flow, scaled down, on built-in data, in minutes on 2 CPU cores.

    python -m compress.quickstart [--out runs/quickstart] [--teacher-steps 300] [--student-steps 150]

1. trains a ``tiny`` teacher (the full structure, MEFC included, at dim 8; recipe ``teacher_tiny``) on
   synthetic rain over scikit-image's bundled photos (no download);
2. prunes it to half its MACs and distils the student (recipe ``prune50_distill``);
3. evaluates both on a held-out built-in photo with fixed light and heavy rain (and on the first
   images of Rain100L/H when ``../shared/data`` is there);
4. writes one record per run, ``summary.md`` and the Pareto plots under ``--out``.
The numbers it prints are from this tiny, short run: they show the flow, not DRSformer's quality.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console

from compress.console import cli
from compress.data import VALIDATION_IMAGES, builtin_images, to_uint8
from compress.plots import regenerate
from compress.rain import add_rain
from compress.recipe import load_recipe
from compress.results import write_record
from compress.run import run_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def builtin_test_set(folder: Path, size: int = 128) -> Path:
    """A paired set (input/ + target/) from the held-out built-in photo: light and heavy synthetic rain."""
    from PIL import Image

    clean = builtin_images(VALIDATION_IMAGES)[0].float()[None] / 255
    top, left = (clean.shape[2] - size) // 2, (clean.shape[3] - size) // 2
    clean = clean[..., top : top + size, left : left + size]
    for sub in ("input", "target"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name, heaviness in (("light", 0.0), ("heavy", 1.0)):
        rainy = add_rain(clean, heaviness, torch.Generator().manual_seed(2024))
        for sub, img in (("input", rainy), ("target", clean)):
            array = to_uint8(img[0]).permute(1, 2, 0).numpy()
            Image.fromarray(array).save(folder / sub / f"{name}.png")
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--teacher-steps", type=int, default=300)
    parser.add_argument("--student-steps", type=int, default=150)
    parser.add_argument("--rain100-images", type=int, default=5, help="images of Rain100L/H to score, if present")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier quickstart's runs under --out")
    args = parser.parse_args(argv)
    console = Console()
    started = time.perf_counter()
    paired = {"builtin": str(builtin_test_set(args.out / "data" / "builtin_synthetic"))}
    if SHARED.is_dir():
        paired.update({name: str(SHARED / name) for name in ("rain100L", "rain100H")})
    common = [
        f"out_dir={args.out / 'runs'}", 'data.backgrounds=["builtin"]', "data.patch_size=48", "data.val_size=96",
        "data.val_sets={}", "data.leak_check=[]", "train.batch_size=4", "train.eval_every=100000",
        "train.save_every=100000", "eval.real={}", f"eval.paired={paired}", f"eval.limit={args.rain100_images}",
    ]  # fmt: skip
    teacher = load_recipe(RECIPES / "teacher_tiny.yaml", common + [
        f"train.steps={args.teacher_steps}", f"train.lr_hold_steps={args.teacher_steps // 3}"])  # fmt: skip
    student = load_recipe(RECIPES / "prune50_distill.yaml", common + [
        f"teacher.recipe={RECIPES / 'teacher_tiny.yaml'}", f"train.steps={args.student_steps}",
        f"train.lr_hold_steps={args.student_steps // 3}"])  # fmt: skip
    # the student's teacher is the teacher trained here: point its recipe at the same run directory
    student = student.model_copy(update={"teacher": student.teacher.model_copy(
        update={"recipe": None, "path": str(teacher.run_dir / "final")})})  # fmt: skip
    results = args.out / "results"
    for stage, recipe in (("teacher", teacher), ("student", student)):
        console.rule(f"[bold]{stage}: {recipe.name}")
        record = run_recipe(recipe, None, console, overwrite=args.overwrite)
        model = "tiny preset" if recipe.teacher is None else "pruned from the quickstart teacher"
        record["scale"] = f"quickstart: {model}, {recipe.train.steps} steps x 4 patches of 48 px, built-in photos"
        write_record(record, results / "runs" / f"{recipe.name}.json")
    for path in regenerate(results):
        console.print(f"wrote {path}")
    console.print((results / "summary.md").read_text())
    console.print(f"quickstart done in {time.perf_counter() - started:.0f} s; everything is under {args.out}/")


if __name__ == "__main__":
    cli(main)

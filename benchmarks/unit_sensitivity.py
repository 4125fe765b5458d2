"""Which units are cheapest to prune: each unit family pruned alone to a MACs budget, scored with no training.

    python -m benchmarks.unit_sensitivity results/first_protocol/teacher_tiny --limit 10

For every unit set below and every budget in ``--budgets`` (share of the teacher's MACs kept), prunes the
trained teacher (L1, global ranking, ``--max-ratio`` cap; 1.0 = none, as the recipes) and scores the
student as it comes out of pruning on the first ``--limit`` images of Rain100L and Rain100H; the uniform
width ratio is scored once at the MACs it lands on. A unit set that cannot reach a budget is recorded with
the error, not skipped silently. The drop before any training is the usual sensitivity measure; the trained
recipes (``prune50_*``) say how much of it training recovers. Writes ``results/bench/unit_sensitivity.json`` atomically.

``--recipes`` prunes with each recipe's own ``prune`` section instead (units, budget, cap, criterion), so each row
is exactly the student that recipe trains, before its training (``benchmarks/study.sh``: the study_prune75_*
unit families against their records).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from compress.evaluate import evaluate, load_model
from compress.measure import count_macs, count_params
from compress.prune import PruneError, PruneSpec, prune
from compress.recipe import load_recipe
from compress.run import pruned
from drsformer.io import write_json

UNIT_SETS = {
    "experts+steps (MEFC)": ["experts", "steps"],
    "blocks+steps (depth)": ["blocks", "steps"],
    "width (global)": ["width"],
    "head_channels+ffn (block internals)": ["head_channels", "ffn"],
    "head_channels+ffn+experts (prune50_distill)": ["head_channels", "ffn", "experts"],
}
SETS = {"rain100L": "../shared/data/rain100L", "rain100H": "../shared/data/rain100H"}


def scored(student, teacher, limit: int) -> dict:
    sets = evaluate(student, SETS, limit=limit, show=False)
    return {
        "macs_kept": count_macs(student.config) / count_macs(teacher.config),
        "params_kept": count_params(student) / count_params(teacher),
        **{f"{name}_psnr_y_db": s["psnr_y_db"] for name, s in sets.items()},
        **{f"{name}_ssim_y": s["ssim_y"] for name, s in sets.items()},
        "widths": [level.width for level in student.config.levels],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("teacher", help="a from_pretrained directory")
    parser.add_argument("--budgets", default="0.75,0.5")
    parser.add_argument("--max-ratio", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--recipes", type=Path, nargs="+", help="prune as each recipe's prune section (not UNIT_SETS)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipes = [(path, load_recipe(path)) for path in args.recipes or []]  # a bad recipe fails before any work
    for path, recipe in recipes:
        if recipe.prune is None:
            raise SystemExit(f"{path}: no prune section; give recipes that prune the teacher")
    teacher = load_model(args.teacher).eval()
    rows = [{"units": "none (teacher)", "budget": 1.0, **scored(teacher, teacher, args.limit)}]
    for path, recipe in recipes:
        p = recipe.prune
        row = {"units": "+".join(p.units) + f" ({path.stem})", "recipe": str(path),
               "budget": p.target_macs if p.target_macs is not None else p.target_params,
               "max_ratio": p.max_ratio, "criterion": p.criterion}  # fmt: skip
        row.update(scored(pruned(recipe, teacher)[0], teacher, args.limit))  # as the recipe's run prunes
        rows.append(row)
        print(json.dumps(row))
    for name, units in UNIT_SETS.items() if not recipes else ():
        for budget in (float(b) for b in args.budgets.split(",")):
            row = {"units": name, "budget": budget}
            try:
                student, _ = prune(teacher, PruneSpec(units, target_macs=budget, max_ratio=args.max_ratio))
                row.update(scored(student, teacher, args.limit))
            except PruneError as error:
                row["error"] = str(error)
            rows.append(row)
            print(json.dumps(row))
    if not recipes:
        student, _ = prune(teacher, PruneSpec(["width"], ratios={"width": 0.5}))
        rows.append({"units": "width (uniform ratio 0.5)", "budget": None, **scored(student, teacher, args.limit)})
    rule = "each recipe's prune section" if recipes else f"L1 importance; max_ratio {args.max_ratio}"
    record = {
        "command": " ".join(["python -m benchmarks.unit_sensitivity", *(sys.argv[1:] if argv is None else argv)]),
        "teacher": args.teacher,
        "scale": f"no training after pruning; first {args.limit} images of each set; {rule}; "
        f"CPU, {args.threads} threads, fp32",
        "torch": torch.__version__,
        "rows": rows,
    }
    out = args.out / "unit_sensitivity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    for row in rows:
        psnr = "" if "error" in row else f"L {row['rain100L_psnr_y_db']:.2f} H {row['rain100H_psnr_y_db']:.2f}"
        kept = "" if "error" in row else f"{row['macs_kept']:.2f} MACs {row['params_kept']:.2f} params"
        print(f"{row['units']:<45} {row['budget']!s:<5} {kept:<28} {psnr or row['error'][:60]}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

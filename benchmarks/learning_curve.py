"""A run's learning curve (``<run>/curve.json``, written by ``fit()`` at every validation) as a plot and a
plateau verdict: the run has plateaued at step s when the 50% more steps up to 1.5 s added less than
``--tolerance`` dB (0.1) on every validation set.

A run that ends in a cosine decay gains from the decay itself, so the last 50% of its own schedule never looks
flat. ``--continued`` appends the curve of a run that trained the final model on (a new learning-rate cycle of
50% more steps, ``recipes/study_teacher_plateau.yaml``), its steps counted after the base run's last step: the
plateau check from the base's end to the continuation's is the test that more training no longer pays. Given
again, it appends a run that continued the previous one (a chain of cycles, when a test fails and its run's
final model becomes the next candidate). With continuations only the end of a segment (a saved final model) can
be the plateau, and no check spans a restart from inside a segment (a model mid-decay against one at the new
cycle's high learning rate says nothing about more training).

    python -m benchmarks.learning_curve runs/teacher_study [--out results/teacher_study]
    python -m benchmarks.learning_curve runs/teacher_study --continued runs/study_teacher_plateau --out ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from drsformer.io import atomic_write, write_json


def plateau(points: list[dict], tolerance: float = 0.1, restarts: tuple[int, ...] = ()) -> dict:
    """Per validation step s that has a point at or after 1.5 s: the largest gain of any set from s to there.
    ``restarts``: the steps where a continuation began (each a segment's saved final model); then no check starts
    inside a segment and ends past its restart, and only a restart can be the plateau (the first that passes)."""
    checks = []
    for p in points:
        later = [q for q in points if q["step"] >= 1.5 * p["step"]]
        if not later:
            continue
        q = later[0]
        if any(p["step"] < r < q["step"] for r in restarts):
            continue
        gains = {k: q["val"][k]["psnr_y_db"] - v["psnr_y_db"] for k, v in p["val"].items() if k in q["val"]}
        checks.append({"from": p["step"], "to": q["step"], "gain_db": gains,
                       "plateau": max(gains.values()) < tolerance})  # fmt: skip
    candidates = [c for c in checks if c["plateau"] and (not restarts or c["from"] in restarts)]
    first = candidates[0] if candidates else None
    return {"tolerance_db": tolerance, "restarts": list(restarts), "checks": checks,
            "plateau_at": first["from"] if first else None}  # fmt: skip


def continued(points: list[dict], more: list[dict]) -> list[dict]:
    """``points`` followed by ``more`` (a run trained on from the last of them), its steps shifted to follow."""
    end = points[-1]["step"]
    return points + [{**q, "step": end + q["step"], "continued": True} for q in more]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, help="folder for curve.json, curve.png and plateau.json (default: run)")
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--continued", type=Path, action="append", default=[],
                        help="a run that trained the previous run's final model on (repeat for a chain)")  # fmt: skip
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = json.loads((args.run / "curve.json").read_text())
    restarts = []
    for run in args.continued:
        restarts.append(points[-1]["step"])
        points = continued(points, json.loads((run / "curve.json").read_text()))
    out = args.out or args.run
    verdict = plateau(points, args.tolerance, tuple(restarts))
    # the run whose final model is the plateau (a segment's end; a run alone: itself), and the most trained one
    runs = [args.run, *args.continued]
    at = verdict["plateau_at"]
    verdict["plateau_run"] = None if at is None else (runs[restarts.index(at)] if restarts else args.run).name
    verdict["last_run"] = runs[-1].name
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in points[0]["val"]:
        ax.plot([p["step"] for p in points], [p["val"][name]["psnr_y_db"] for p in points], marker="o", label=name)
    for restart, run in zip(restarts, args.continued):
        ax.axvline(restart, color="grey", ls="--", lw=1)
        ax.annotate(f"{run.name} from here", (restart, ax.get_ylim()[0]), fontsize=7, color="grey",
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("PSNR (Y, dB), validation crops")
    state = f"plateau at step {verdict['plateau_at']}" if verdict["plateau_at"] else "no plateau yet"
    ax.set_title(f"{args.run.name}: {len(points)} validations, last at step {points[-1]['step']}; {state}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "curve.png", lambda p: fig.savefig(p, dpi=110, format="png"))
    if out != args.run:
        write_json(out / "curve.json", points)
    write_json(out / "plateau.json", verdict)
    print(json.dumps({k: v for k, v in verdict.items() if k != "checks"}), f"-> {out}")


if __name__ == "__main__":
    main()

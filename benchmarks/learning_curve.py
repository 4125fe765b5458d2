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

    python -m benchmarks.learning_curve runs/teacher_study [--out results/study]
    python -m benchmarks.learning_curve runs/teacher_study --continued runs/study_teacher_plateau --out results/study

The validation crops are few (8 Rain100L/H crops swing by 1-3 dB between validations), so with ``--records``
(``results/runs``) the verdict at each restart comes from the runs' records instead: a link's record against the
previous link's over every test image of every set they share (all 100 + 100 Rain100L/H and the held-out
synthetic sets), the mean gain with its paired bootstrap 95% interval; plateau when the mean gain is under the
tolerance on every set. The crop checks stay in ``plateau.json`` (``validation_plateau_at``) beside it.

    python -m benchmarks.learning_curve runs/teacher_study --continued runs/study_teacher_plateau \
        --records results/runs --out results/study

``--out`` is refused when it holds a training run other than ``run`` (the joined curve would replace that run's
own curve.json), and a run whose curve.json does not end at its summary's last step is refused as not its own.
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


class RecordError(SystemExit):
    """A link without a usable record; the message names the file and the command that makes it."""


def record_gains(before: dict, after: dict, tolerance: float = 0.1) -> dict:
    """``after``'s PSNR gain over ``before`` on every set both scored with PSNR, image by image: the mean gain, its
    paired bootstrap 95% interval and the image count per set; ``plateau`` when every mean gain is under
    ``tolerance``. Both must have scored the same images of a set (a record of the first images cannot decide)."""
    from compress.results import paired_bootstrap

    sets = {}
    for name, old in before["sets"].items():
        new = after["sets"].get(name)
        if new is None or "psnr_y_db" not in old or "psnr_y_db" not in new:
            continue
        a = {r["name"]: r["psnr_y_db"] for r in old["per_image"]}
        b = {r["name"]: r["psnr_y_db"] for r in new["per_image"]}
        if a.keys() != b.keys():
            raise RecordError(f"{after['stem']} and {before['stem']} scored different images of {name} "
                              f"({len(b)} and {len(a)}): score every image in both (no eval.limit)")  # fmt: skip
        names = sorted(a)
        mean, lo, hi = paired_bootstrap([b[n] for n in names], [a[n] for n in names])
        sets[name] = {"images": len(names), "gain_db": mean, "ci95_db": [lo, hi]}
    if not sets:
        raise RecordError(f"{after['stem']} and {before['stem']} share no set scored with PSNR")
    return {"sets": sets, "plateau": max(v["gain_db"] for v in sets.values()) < tolerance}


def projection(links: list[dict], chain_steps: int, tolerance: float = 0.1) -> dict:
    """Without a plateau, how many more links the records' trend asks for: per set, the last link's mean gain and
    its ratio to the link's before; if every set still at or over ``tolerance`` shrinks by that ratio each link
    (a guess, not a measurement), the links until each gain falls under it, and the training steps they take
    (each link trains 50% of the chain so far: ``chain_steps`` x (1.5^n - 1) for n links). A set whose gain does
    not shrink (or a chain of one link) has no projection."""
    import math

    if len(links) < 2:
        return {"links_more": None, "why": "one link: no trend yet", "sets": {}}
    sets, needed = {}, []
    for name, last in links[-1]["sets"].items():
        before = links[-2]["sets"].get(name)
        gain = last["gain_db"]
        ratio = gain / before["gain_db"] if before and before["gain_db"] > 0 else None
        if gain < tolerance:
            more = 0
        elif ratio is not None and 0 < ratio < 1:
            more = math.floor(math.log(tolerance / gain) / math.log(ratio)) + 1
        else:
            more = None
        sets[name] = {"gains_db": [before["gain_db"] if before else None, gain], "ratio": ratio, "links_more": more}
        needed.append(more)
    if any(n is None for n in needed):
        return {"links_more": None, "why": "a set still gaining does not gain less link by link", "sets": sets}
    more = max(needed)
    return {"links_more": more, "steps_more": round(chain_steps * (1.5**more - 1)), "sets": sets,
            "why": "each set's gain shrinking by its last ratio per link (a guess from two links)"}  # fmt: skip


class CurveError(SystemExit):
    """A run's curve that is not its own, or an --out that would overwrite a training run's files."""


def run_curve(run: Path) -> list[dict]:
    """``run``'s own validation curve. With the run's ``summary.json`` beside it, the curve must end at the run's
    last step: a longer one is a joined chain's curve copied over the run's own (what ``--out <a run>`` did to
    results/teacher_study before this check), which would shift every restart and the chain's step count."""
    path = run / "curve.json"
    if not path.is_file():
        raise CurveError(f"{path}: not found; give a training run's folder (its curve.json is written at every "
                         "validation)")  # fmt: skip
    points = json.loads(path.read_text())
    summary = run / "summary.json"
    steps = json.loads(summary.read_text()).get("steps") if summary.is_file() else None
    if not points:
        raise CurveError(f"{path}: no validation points; train the run past its first eval_every")
    if steps is not None and points[-1]["step"] != steps:
        raise CurveError(f"{path} ends at step {points[-1]['step']}, but its run trained {steps} steps "
                         f"({summary}): it is not this run's own curve (a joined curve written over it?); restore "
                         "the run's own curve.json (git history) before joining")  # fmt: skip
    return points


def check_out(out: Path, run: Path) -> None:
    """The joined curve, plot and verdict go to a folder of their own: never over a training run's files."""
    if out.resolve() == run.resolve():
        return  # into the base run's own folder: the plot and verdict beside its curve, which is never rewritten
    held = [name for name in ("state", "final", "summary.json") if (out / name).exists()]
    if held:
        raise CurveError(f"--out {out}: holds a training run ({', '.join(held)}); its curve.json would be replaced "
                         "by the joined curve. Write to a folder of its own (benchmarks/study.sh: results/study)")


def read_record(records: Path, run: str) -> dict:
    path = records / f"{run}.json"
    if not path.is_file():
        raise RecordError(f"{path}: no record of run {run}; make it first (python compress/run.py "
                          f"recipes/{run}.yaml --resume scores every test image), or leave out --records")  # fmt: skip
    return json.loads(path.read_text())


def continued(points: list[dict], more: list[dict]) -> list[dict]:
    """``points`` followed by ``more`` (a run trained on from the last of them), its steps shifted to follow."""
    end = points[-1]["step"]
    return points + [{**q, "step": end + q["step"], "continued": True} for q in more]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path,
                        help="folder for curve.json, curve.png and plateau.json (default: run), not another run's")
    parser.add_argument("--tolerance", type=float, default=0.1)
    parser.add_argument("--continued", type=Path, action="append", default=[],
                        help="a run that trained the previous run's final model on (repeat for a chain)")  # fmt: skip
    parser.add_argument("--records", type=Path,
                        help="the runs' records (results/runs): decide each restart over every test image")  # fmt: skip
    args = parser.parse_args(argv)
    if args.records is not None and not args.continued:
        parser.error("--records compares a run with its continuation: give --continued too")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = args.out or args.run
    check_out(out, args.run)
    points = run_curve(args.run)
    restarts = []
    for run in args.continued:
        restarts.append(points[-1]["step"])
        points = continued(points, run_curve(run))
    verdict = plateau(points, args.tolerance, tuple(restarts))
    # the run whose final model is the plateau (a segment's end; a run alone: itself), and the most trained one
    runs = [args.run, *args.continued]
    at = verdict["plateau_at"]
    verdict["plateau_run"] = None if at is None else (runs[restarts.index(at)] if restarts else args.run).name
    verdict["last_run"], verdict["last_step"] = runs[-1].name, points[-1]["step"]  # the most trained, its steps
    if args.records is not None:  # every test image decides, not the crops
        recs = [read_record(args.records, run.name) for run in runs]
        links = [{"from_run": a["stem"], "to_run": b["stem"], "at_step": step,
                  **record_gains(a, b, args.tolerance)} for a, b, step in zip(recs, recs[1:], restarts)]  # fmt: skip
        first = next((link for link in links if link["plateau"]), None)
        verdict["validation_plateau_at"] = verdict["plateau_at"]
        verdict["records"] = links
        verdict["plateau_at"] = first["at_step"] if first else None
        verdict["plateau_run"] = first["from_run"] if first else None
        if first is None:
            verdict["projection"] = projection(links, verdict["last_step"], args.tolerance)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in points[0]["val"]:
        ax.plot([p["step"] for p in points], [p["val"][name]["psnr_y_db"] for p in points], marker="o", label=name)
    for restart, run in zip(restarts, args.continued):
        ax.axvline(restart, color="grey", ls="--", lw=1)
        ax.annotate(f"{run.name} from here", (restart, ax.get_ylim()[0]), fontsize=7, color="grey", rotation=90,
                    xytext=(3, 3), textcoords="offset points", va="bottom")  # vertical: restarts never overlap
    ax.set_xlabel("training step")
    ax.set_ylabel("PSNR (Y, dB), validation crops")
    judge = " (all test images)" if args.records is not None else ""
    state = f"plateau at step {verdict['plateau_at']}{judge}" if verdict["plateau_at"] else f"no plateau yet{judge}"
    ax.set_title(f"{args.run.name}: {len(points)} validations, last at step {points[-1]['step']}\n{state}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "curve.png", lambda p: fig.savefig(p, dpi=110, format="png"))
    if out.resolve() != args.run.resolve():
        write_json(out / "curve.json", points)
    write_json(out / "plateau.json", verdict)
    print(json.dumps({k: v for k, v in verdict.items() if k not in ("checks", "records", "projection")}),
          f"-> {out}")
    if "projection" in verdict:
        p = verdict["projection"]
        more = "none" if p["links_more"] is None else f"{p['links_more']} more links ({p['steps_more']} steps)"
        print(f"projection: {more}: {p['why']}")
    for link in verdict.get("records", []):
        gains = ", ".join(f"{k} {v['gain_db']:+.3f} [{v['ci95_db'][0]:+.3f}, {v['ci95_db'][1]:+.3f}] dB ({v['images']})"
                          for k, v in link["sets"].items())  # fmt: skip
        print(f"{link['to_run']} over {link['from_run']}: {gains}; plateau: {link['plateau']}")


if __name__ == "__main__":
    main()

"""``results/summary.md`` and the Pareto plots, regenerated from the run records (never hand-edited).

python -m compress.plots [--results results]

Repeats of a recipe (``<name>_seed<N>``) are one point in the plots: the mean over seeds, with a bar from
the lowest to the highest seed; the summary lists every run and then the mean per recipe. Latency comes
from the records unless ``results/bench/study_latency.json`` (``python -m benchmarks.study_latency``) holds
a side-by-side measurement of the run, which then wins: latencies taken by separate runs on a shared
machine drift more than the differences between students. With ``results/study/plateau.json`` (the study
teacher's learning-curve verdict) the summary says first whether the students' teacher is at its plateau.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import fmean

from compress.results import RESULTS, pareto_front, read_records
from drsformer.io import atomic_write

AXES = (("gmacs_256", "GMACs at 256x256"), ("params_m", "parameters (M)"), ("latency_ms", "CPU latency (ms)"),
        ("deployed_ms", "deployed CPU latency (ms)"))  # deployed: where the records or the benchmark have it


def _psnr(record: dict, test_set: str) -> float | None:
    return record.get("sets", {}).get(test_set, {}).get("psnr_y_db")


def group_by_recipe(records: list[dict]) -> list[dict]:
    """One entry per recipe name: its records (seeds), and the mean of every axis and metric over them."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["recipe"].get("name") or r["stem"], []).append(r)
    out = []
    for name, runs in groups.items():
        entry = {"stem": name, "role": runs[0]["role"], "runs": runs, "seeds": [r["recipe"]["seed"] for r in runs]}
        for key, _ in AXES:
            entry[key] = fmean([r[key] for r in runs]) if all(r.get(key) is not None for r in runs) else None
        sets = {}
        for test_set in {s for r in runs for s in r.get("sets", {})}:
            rows = [r["sets"][test_set] for r in runs if test_set in r.get("sets", {})]
            sets[test_set] = {
                metric: fmean([row[metric] for row in rows]) for metric in ("psnr_y_db", "ssim_y", "niqe", "brisque")
                if all(metric in row for row in rows)
            }  # fmt: skip
            for metric, key in (("psnr_y_db", "psnr_range"), ("niqe", "niqe_range"), ("brisque", "brisque_range")):
                if metric in sets[test_set]:
                    values = [row[metric] for row in rows]
                    sets[test_set][key] = (min(values), max(values))
        entry["sets"] = sets
        out.append(entry)
    return out


def side_by_side_latency(records: list[dict], bench: Path) -> str | None:
    """Replace each record's ``latency_ms`` (and ``deployed_ms``: its deployed artefact's, from the record's
    export stage) by the side-by-side measurement in ``bench`` where it has one; returns the measurement's
    description (None without the file)."""
    for r in records:
        r["deployed_ms"] = (r.get("deployed") or {}).get("latency_ms")
    if not bench.exists():
        return None
    data = json.loads(bench.read_text())
    for r in records:
        r["latency_ms"] = data["latency_ms"].get(r["stem"], r["latency_ms"])
        r["deployed_ms"] = data.get("deployed_ms", {}).get(r["stem"], r["deployed_ms"])
    deployed = f"; deployed: {data['deployed_backend']}" if data.get("deployed_ms") else ""
    return f"latency: side by side, `{data['command']}` ({data['machine']}{deployed})"


def _no_reference_cell(row: dict, seeds: bool) -> str:
    niqe, brisque = f"{row['niqe']:.3f}", f"{row['brisque']:.2f}"
    if seeds:
        niqe += " [{:.3f}, {:.3f}]".format(*row["niqe_range"])
        brisque += " [{:.2f}, {:.2f}]".format(*row["brisque_range"])
    return f"{niqe} / {brisque}"


def summary_markdown(records: list[dict], latency_note: str | None = None, diffs: list[dict] | None = None,
                     teacher_note: str | None = None) -> str:  # fmt: skip
    """The summary's text; ``teacher_note`` (``plateau_note``) goes first, before the tables."""
    sets = sorted({name for r in records for name, row in r.get("sets", {}).items() if "psnr_y_db" in row})
    real = sorted({name for r in records for name, row in r.get("sets", {}).items() if "niqe" in row})
    head = ["run", "role", "seed", "params (M)", "GMACs@256", "latency (ms)", "steps"]
    head += [f"{s} PSNR/SSIM" for s in sets] + [f"{s} NIQE/BRISQUE" for s in real]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(records, key=lambda r: (r["role"] != "teacher", -r["gmacs_256"], r["stem"])):
        cells = [r["stem"], r["role"], str(r["recipe"]["seed"]), f"{r['params_m']:.3f}", f"{r['gmacs_256']:.3f}",
                 f"{r['latency_ms']:.0f}", str(r["train"]["steps"])]  # fmt: skip
        for s in sets:
            row = r["sets"].get(s)
            cells.append(f"{row['psnr_y_db']:.2f} / {row['ssim_y']:.4f}" if row else "-")
        for s in real:
            row = r["sets"].get(s)
            cells.append(f"{row['niqe']:.3f} / {row['brisque']:.2f}" if row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean over seeds per recipe (with two or more seeds, the PSNR range over seeds in brackets):", ""]
    head = ["recipe", "seeds", "GMACs@256", "latency (ms)"] + [f"{s} PSNR" for s in sets]
    head += [f"{s} NIQE/BRISQUE" for s in real]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in sorted(group_by_recipe(records), key=lambda g: (g["role"] != "teacher", -g["gmacs_256"], g["stem"])):
        cells = [g["stem"], ",".join(map(str, g["seeds"])), f"{g['gmacs_256']:.3f}", f"{g['latency_ms']:.0f}"]
        for s in sets:
            row = g["sets"].get(s, {})
            low, high = row.get("psnr_range", (0, 0))
            spread = f" [{low:.2f}, {high:.2f}]" if len(g["seeds"]) > 1 else ""
            cells.append(f"{row['psnr_y_db']:.2f}{spread}" if "psnr_y_db" in row else "-")
        for s in real:
            row = g["sets"].get(s, {})
            cells.append(_no_reference_cell(row, len(g["seeds"]) > 1) if "niqe" in row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if real:
        lines += ["", "NIQE / BRISQUE: lower is better; with two or more seeds, the range over seeds in brackets (a "
                  "difference between recipes inside it is within the seed spread)."]  # fmt: skip
    diffs = differences(records) if diffs is None else diffs
    lines += _differences_table(diffs) + _targets_table(records, diffs)
    published = [(r, name, paper) for r in records
                 for name, paper in r["recipe"].get("eval", {}).get("published", {}).items()]  # fmt: skip
    if published:
        lines += ["", "Against the published figures (the paper's Table 1, Y channel):", "",
                  "| run | set | this run PSNR/SSIM | published PSNR/SSIM | PSNR difference |", "|---|---|---|---|---|"]
        for r, name, paper in published:
            row = r["sets"].get(name)
            ours = f"{row['psnr_y_db']:.2f} / {row['ssim_y']:.4f}" if row else "-"
            diff = f"{row['psnr_y_db'] - paper['psnr_y_db']:+.2f} dB" if row else "-"
            theirs = f"{paper['psnr_y_db']:.2f} / {paper['ssim_y']:.4f}"
            lines.append(f"| {r['stem']} | {name} | {ours} | {theirs} | {diff} |")
    scale = sorted({r.get("scale", "") for r in records} - {""})
    notes = [f"Scale: {s}" for s in scale] + ([latency_note] if latency_note else [])
    head = "# Results\n\nGenerated by `python -m compress.plots` from the run records (`runs/*.json`).\n\n"
    head += f"{teacher_note}\n\n" if teacher_note else ""
    return head + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _per_image_psnr(runs: list[dict], test_set: str) -> dict[str, float]:
    """Per image, the PSNR averaged over ``runs`` (the seeds of one recipe), for the images every run scored."""
    tables = [{row["name"]: row["psnr_y_db"] for row in run.get("sets", {}).get(test_set, {}).get("per_image") or []
               if "psnr_y_db" in row} for run in runs]  # fmt: skip
    names = set.intersection(*(set(t) for t in tables)) if tables else set()
    return {name: fmean([t[name] for t in tables]) for name in names}


def teacher_of(group: dict) -> str:
    """The stem of the teacher record a student belongs to: its teacher recipe's, or, for a ``teacher.path`` to a
    run's final model (``<out>/<stem>/final``, as the quickstart's student names its teacher), that run's."""
    spec = group["runs"][0]["recipe"].get("teacher") or {}
    if spec.get("recipe"):
        return Path(spec["recipe"]).stem
    path = Path(spec.get("path") or "")
    return path.parent.name if path.name == "final" else ""  # compress.train.FINAL (importing it loads accelerate)


def students_teachers(groups: list[dict]) -> set[str]:
    """The stems the plots star (``groups`` from ``group_by_recipe``): the teachers that students (not controls)
    learned from, such as a plateau link the study's students were distilled from; without such students, every
    teacher record."""
    stems = {g["stem"] for g in groups}
    named = {teacher_of(g) for g in groups if g["role"] == "student" and not g["runs"][0]["recipe"].get("control")}
    return (named & stems) or {g["stem"] for g in groups if g["role"] == "teacher"}


def differences(records: list[dict]) -> list[dict]:
    """Each student's PSNR minus its teacher's (a teacher recipe's record, or that of any run whose final model a
    student names as its teacher), minus every control's of the same teacher (``control: true`` recipes) and
    minus that of every recipe it names in ``compare`` or in a target, per set, with a paired bootstrap 95%
    interval over the images both scored (records with per-image rows; a recipe's seeds averaged per image
    first); an interval that contains 0 cannot be told from zero."""
    groups = group_by_recipe(records)
    by_stem = {g["stem"]: g for g in groups}
    named = {teacher_of(g) for g in groups}  # a run's final model that students were distilled from is a teacher
    teachers = {g["stem"]: g for g in groups if g["role"] == "teacher" or g["stem"] in named}
    controls = [g for g in groups if g["runs"][0]["recipe"].get("control")]
    out = []
    for g in sorted(groups, key=lambda g: g["stem"]):
        if g["role"] != "student" or teacher_of(g) not in teachers:
            continue
        teacher = teacher_of(g)
        references = [teachers[teacher]] + [c for c in controls if c is not g and teacher_of(c) == teacher]
        recipe = g["runs"][0]["recipe"]
        wanted = list(recipe.get("compare") or []) + [t["reference"] for t in recipe.get("targets") or []]
        known = {r["stem"] for r in references} | {g["stem"]}
        references += [by_stem[n] for n in dict.fromkeys(wanted) if n in by_stem and n not in known]
        for ref in references:
            for name in sorted(g["sets"]):
                d = pair_difference(g, ref, name)
                if d is not None:
                    out.append({**d, "teacher": ref is teachers[teacher]})
    return out


def pair_difference(group: dict, reference: dict, test_set: str) -> dict | None:
    """``group``'s PSNR minus ``reference``'s on ``test_set`` (recipes from ``group_by_recipe``): the mean over the
    images both scored, each recipe's seeds averaged per image, with its paired bootstrap 95% interval; None when
    they share no scored image."""
    from compress.results import paired_bootstrap

    ours, theirs = _per_image_psnr(group["runs"], test_set), _per_image_psnr(reference["runs"], test_set)
    common = sorted(set(ours) & set(theirs))
    if not common:
        return None
    mean, lo, hi = paired_bootstrap([ours[n] for n in common], [theirs[n] for n in common])
    return {"student": group["stem"], "reference": reference["stem"], "set": test_set, "images": len(common),
            "seeds": (len(group["seeds"]), len(reference["seeds"])), "mean": mean, "lo": lo, "hi": hi}  # fmt: skip


def interval_verdict(d: dict) -> str:
    """Whether a difference's 95% interval lies above 0, below it, or contains it."""
    return "cannot be told from 0" if d["lo"] <= 0 <= d["hi"] else ("above" if d["lo"] > 0 else "below")


def _differences_table(diffs: list[dict]) -> list[str]:
    rows = []
    for d in diffs:
        cells = [d["student"], d["reference"], d["set"], str(d["images"]), "{}/{}".format(*d["seeds"]),
                 f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]", interval_verdict(d)]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "Student minus teacher, minus each control and minus each recipe it names in `compare`, PSNR (dB): "
            "mean over images (each recipe's seeds averaged per image) with a paired bootstrap 95% interval over "
            "images:", "",
            "| student | reference | set | images | seeds | difference [95% CI] | verdict |",
            "|---|---|---|---|---|---|---|", *rows]  # fmt: skip


def target_verdict(goal: float, mean: float, lo: float, hi: float) -> str:
    """Whether a difference meets ``difference >= goal``, by its mean and by its whole 95% interval."""
    if mean >= goal:
        return "met" if lo >= goal else f"met by the mean; the interval reaches {lo:+.3f}, below the goal"
    return f"missed by {goal - mean:.3f} dB" + ("; the interval reaches the goal" if hi >= goal else "")


def _targets_table(records: list[dict], diffs: list[dict]) -> list[str]:
    """Every recipe's ``targets`` against the differences: met, met by the mean only, missed by how much, or
    not measurable yet (a record missing)."""
    rows = []
    for g in sorted(group_by_recipe(records), key=lambda g: g["stem"]):
        for t in g["runs"][0]["recipe"].get("targets") or []:
            ref = teacher_of(g) if t["reference"] == "teacher" else t["reference"]
            found = [d for d in diffs if d["student"] == g["stem"] and d["reference"] == ref
                     and (not t["sets"] or d["set"] in t["sets"])]  # fmt: skip
            goal = f"{t['at_least_db']:+.2f} dB vs {ref}"
            if not found:
                missing = f"not measured: no record of {ref} with per-image scores"
                rows.append(f"| {g['stem']} | {goal} | - | - | {missing} |")
            for d in found:
                interval = f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                verdict = target_verdict(t["at_least_db"], d["mean"], d["lo"], d["hi"])
                rows.append(f"| {g['stem']} | {goal} | {d['set']} | {interval} | {verdict} |")
    if not rows:
        return []
    return ["", "The study's targets (each recipe's `targets`: difference >= goal, PSNR dB, paired bootstrap 95% "
            "interval over images):", "", "| student | goal | set | difference [95% CI] | verdict |",
            "|---|---|---|---|---|", *rows]  # fmt: skip


LABEL_LINE, LABEL_CHAR = 1.5, 0.55  # label height and mean character width, in font sizes
MARKER_POINTS = 5.0  # half the size of a plotted marker plus a margin, in points


def _label_boxes(ax, labels, size: float) -> list[tuple[float, float, float, float]]:
    """(left, right, bottom, point y) in points for each label, lowest point first: a label whose box would
    overlap one already placed, or cover another label's point (its marker), moves up past it."""
    to_points = 72 / ax.figure.dpi
    line, char, r = size * LABEL_LINE, size * LABEL_CHAR, MARKER_POINTS
    points = [tuple(v * to_points for v in ax.transData.transform((x, y))) for x, y, _ in labels]
    placed = []
    for i, ((px, py), (_, _, text)) in enumerate(zip(points, labels)):
        left, right, bottom = px + 3, px + 3 + char * len(text), py + 3
        moved = True
        while moved:  # each bump strictly raises bottom to one of finitely many obstacle tops, so this ends
            moved = False
            for p_left, p_right, p_bottom, _ in placed:
                if left < p_right and p_left < right and p_bottom - line < bottom < p_bottom + line:
                    bottom, moved = p_bottom + line, True
            for j, (qx, qy) in enumerate(points):  # `bottom < qy + r`, not `bottom - r < qy`: rounding could repeat
                if j != i and left - r < qx < right + r and bottom < qy + r and qy < bottom + line + r:
                    bottom, moved = qy + r, True
        placed.append((left, right, bottom, py))
    return placed


def place_labels(ax, labels: list[tuple[float, float, str]], size: float = 7.0) -> None:
    """Annotate points without overlapping labels (a 1-D repel: labels move up, with a thin line back to
    their point); the top of the axes is raised until the highest label fits."""
    labels = sorted(labels, key=lambda item: (item[1], item[0]))
    ax.autoscale_view()
    to_points = 72 / ax.figure.dpi
    for _ in range(5):  # raising the top shrinks the scale, which changes the placement: repeat until it fits
        placed = _label_boxes(ax, labels, size)
        over = max(bottom + size * LABEL_LINE for _, _, bottom, _ in placed) - ax.bbox.y1 * to_points
        if over <= 0:
            break
        low, high = ax.get_ylim()
        ax.set_ylim(low, high + over / (ax.bbox.height * to_points) * (high - low))
    for (x, y, text), (_, _, bottom, py) in zip(labels, placed):
        moved = bottom - (py + 3) > 1
        ax.annotate(text, (x, y), fontsize=size, xytext=(3, bottom - py), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if moved else None)  # fmt: skip


def pareto_plot(records: list[dict], x_key: str, x_label: str, test_set: str, out: Path,
                diffs: list[dict] | None = None) -> Path | None:  # fmt: skip
    """PSNR on ``test_set`` against ``x_key``, one point per recipe (mean over seeds): the seed range as a bar
    and, for a student, the paired bootstrap 95% interval of its difference to the teacher as caps around its
    point (``differences``), so that a gap the images cannot tell from zero shows as caps reaching the star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_by_recipe(records)
    rows = [(g, _psnr(g, test_set)) for g in groups]
    rows = [(g, y) for g, y in rows if y is not None and g[x_key] is not None]
    if not rows:
        return None
    if diffs is None:
        diffs = differences(records)
    # the teacher-difference interval, placed around the student's own mean PSNR
    intervals = {d["student"]: (y + d["lo"] - d["mean"], y + d["hi"] - d["mean"])
                 for d in diffs for g, y in rows if d["teacher"] and d["set"] == test_set and d["student"] == g["stem"]}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    points = [(g[x_key], y) for g, y in rows]
    front = pareto_front(points)
    labels = []
    stars = students_teachers(groups)
    for (g, y), (x, _) in zip(rows, points):
        teacher, control = g["stem"] in stars, bool(g["runs"][0]["recipe"].get("control"))
        earlier = g["role"] == "teacher" and not teacher  # trained from scratch, but not what the students learned from
        marker, color = ("*", "C3") if teacher or earlier else (("s", "C2") if control else ("o", "C0"))
        ax.scatter(x, y, marker=marker, s=140 if teacher or earlier else 36, zorder=3,
                   **({"facecolors": "none", "edgecolors": color} if earlier else {"color": color}))  # fmt: skip
        low, high = g["sets"][test_set]["psnr_range"]
        if high > low:
            ax.plot([x, x], [low, high], color="C0", lw=3, alpha=0.35, zorder=2)
        interval = None if teacher else intervals.get(g["stem"])  # a star is the reference, not a point measured
        if interval is not None:
            ax.errorbar(x, y, yerr=[[y - interval[0]], [interval[1] - y]], fmt="none", ecolor=color, elinewidth=0.8,
                        capsize=3, zorder=2)  # fmt: skip
        labels.append((x, y, g["stem"] if len(g["seeds"]) == 1 else f"{g['stem']} ({len(g['seeds'])} seeds)"))
    place_labels(ax, labels)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="0.5", zorder=2)
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{test_set} PSNR (Y, dB)")
    # the key is in the title, not a legend box that could cover a point
    hollow = " (hollow: a teacher they did not learn from)" if any(
        g["role"] == "teacher" and g["stem"] not in stars for g, _ in rows) else ""
    ax.set_title(f"{test_set}: PSNR vs {x_label}\nstar = the students' teacher{hollow}, squares = controls,\n"
                 "dashed = Pareto front, shaded bars = range over seeds, caps = 95% interval of the\ndifference to "
                 "the point's teacher (paired bootstrap over images)", fontsize=8)  # fmt: skip
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return out


def plateau_note(path: Path) -> str | None:
    """What ``benchmarks.learning_curve --records`` decided of the study teacher (``path``: its plateau.json), for
    the summary's head: which run is the teacher, after how many steps, and, without a plateau, the last link's gain
    per set with its interval, so that no student's difference to it is read as one to a converged teacher."""
    if not path.is_file():
        return None
    verdict = json.loads(path.read_text())
    links = verdict.get("records") or []

    def gains(link: dict) -> str:
        return ", ".join(f"{name} {v['gain_db']:+.3f} [{v['ci95_db'][0]:+.3f}, {v['ci95_db'][1]:+.3f}]"
                         for name, v in link["sets"].items())  # fmt: skip

    tolerance = verdict["tolerance_db"]
    if verdict.get("plateau_run"):
        run = verdict["plateau_run"]
        passed = next((link for link in links if link["from_run"] == run), None)
        detail = f": 50% more steps gained under {tolerance} dB on every set ({gains(passed)} dB)" if passed else ""
        return f"Study teacher: `{run}`, at its plateau (step {verdict['plateau_at']}){detail} (`{path}`)."
    still = ""
    if links:
        last = links[-1]
        gaining = [name for name, v in last["sets"].items() if v["gain_db"] >= tolerance]
        still = (f": its last 50% more steps (`{last['to_run']}` over `{last['from_run']}`) still gained "
                 f"{gains(last)} dB, at least {tolerance} dB on {', '.join(gaining)}")  # fmt: skip
    return (f"Study teacher: `{verdict['last_run']}` after {verdict['last_step']} steps, **not at its plateau**{still} "
            f"(`{path}`). Differences to it on a set still gaining are to a teacher that more training would "
            "improve; the `control` runs (the teacher trained for the students' steps) are the fairer reference.")


def regenerate(results: Path = RESULTS) -> list[Path]:
    """Rewrite ``summary.md`` and ``pareto_<x>_<set>.png`` in ``results`` from ``results/runs``."""
    records = read_records(results / "runs")
    if not records:
        return []
    written = [results / "summary.md"]
    latency_note = side_by_side_latency(records, results / "bench" / "study_latency.json")
    diffs = differences(records)
    teacher = plateau_note(results / "study" / "plateau.json")  # the study's teacher verdict, where there is one
    text = summary_markdown(records, latency_note, diffs, teacher)
    atomic_write(written[0], lambda p: Path(p).write_text(text))
    sets = sorted({name for r in records for name, row in r.get("sets", {}).items() if "psnr_y_db" in row})
    for test_set in sets:
        for key, label in AXES:
            out = pareto_plot(records, key, label, test_set, results / f"pareto_{key}_{test_set}.png", diffs)
            if out:
                written.append(out)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for path in regenerate(args.results):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

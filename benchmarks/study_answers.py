"""The second study's questions (issue 19), each answered from whatever records exist so far, into
``results/study/answers.md``:

    python -m benchmarks.study_answers [--results results] [--readme README.md]

``results/summary.md`` lists every difference of every student; this groups them by question: each row is one
comparison (a recipe's PSNR minus another's, the seeds of each averaged per image) on one test set, with its
paired bootstrap 95% interval over images, whether the interval excludes 0, and the recipe's own target
(its ``targets``, the issue's goals) where it sets one. A comparison whose records are not there yet says
which are missing, so the file can be regenerated after every session of a study that spans several.
NIQE/BRISQUE (no ground truth) are compared with the spread over the seeds of the distilled 50% student, not
with an interval. The last section says how each record was made (steps, the precision it trained in, machine,
commit): a study spanning sessions runs on whatever machine each session gets, and a recipe whose seeds trained
in different precisions has that difference inside its seed spread, which the text then says, and a comparison
between recipes whose runs did is marked (the teacher's own training excepted: it is what is measured against).
``--readme`` also rewrites the study's part of the README's results section (between its two
``<!-- study results -->`` markers) from the same records: each student's difference to the teacher per test set,
and what the study still lacks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compress.plots import (
    group_by_recipe,
    interval_verdict,
    pair_difference,
    plateau_note,
    students_teachers,
    target_verdict,
    teacher_of,
)
from compress.results import RESULTS, read_records
from drsformer.io import atomic_write

TEACHER = "teacher"  # stands for the record the students learned from (compress.plots.students_teachers)
CONTROL = "study_teacher_continued"
P50, SCRATCH, LONG = "study_prune50_distill", "study_scratch50", "study_scratch50_long"
# the recipes benchmarks/study.sh runs with three seeds (its MAIN; a test keeps the two lists equal)
MAIN = (P50, "study_prune50_outputkd", "study_prune50_finetune", SCRATCH, CONTROL)
SEEDS = 3
MIXED = " (trained in different precisions)"  # a comparison whose two sides' runs did: see precision_differs
BEGIN, END = "<!-- study results: begin -->", "<!-- study results: end -->"
# (question, [(recipe, reference)], note); a comparison's target is the recipe's own (`targets:` in its YAML)
QUESTIONS = [
    ("How close are the students to the teacher at 50%, 33% and 25% of its MACs, and at 50% of its parameters?",
     [(P50, TEACHER), ("study_prune33_distill", TEACHER), ("study_prune25_distill", TEACHER),
      ("study_params50_distill", TEACHER)],
     "Targets (the recipes' `targets`, from the issue): within 0.15 dB at 50% of the MACs, within 0.5 dB at 25%."),
    ("The same students against the control: the teacher trained on for the students' 1000 steps",
     [(P50, CONTROL), ("study_prune33_distill", CONTROL), ("study_prune25_distill", CONTROL),
      ("study_params50_distill", CONTROL), (CONTROL, TEACHER)],
     "The last row is what 1000 more steps give the teacher itself: a student's gap to the teacher that this "
     "control shares is training, not pruning."),
    ("Feature vs output vs no distillation (50% of the MACs)",
     [(P50, "study_prune50_outputkd"), (P50, "study_prune50_finetune"),
      ("study_prune50_outputkd", "study_prune50_finetune")], None),
    ("Pruned and distilled vs the same-size student trained from scratch, at equal and at full budget",
     [(P50, SCRATCH), (P50, LONG), (LONG, SCRATCH)],
     f"Target from the issue: at least 0.5 dB above `{SCRATCH}` (equal steps). `{LONG}` trains the teacher's "
     "steps plus a student's."),
    ("Which unit families are cheapest: 75% of the MACs from one family alone, after training",
     [("study_prune75_experts", "study_prune75_distill"), ("study_prune75_depth", "study_prune75_distill"),
      ("study_prune75_width", "study_prune75_distill"), ("study_prune75_distill", TEACHER),
      ("study_prune75_experts", TEACHER), ("study_prune75_depth", TEACHER),
      ("study_prune75_width", TEACHER)],
     "Before training: `results/study/unit_sensitivity.json` (benchmarks.unit_sensitivity)."),
    ("LoRA against full distillation (50% of the MACs)", [("study_prune50_lora", P50)], None),
]  # fmt: skip
REAL_RAIN = ("Does training on real unlabelled rain change NIQE / BRISQUE beyond the seed spread?",
             "study_prune50_realrain", P50)  # fmt: skip


def recipe_target(group: dict, reference: str, teacher: str, test_set: str) -> float | None:
    """``group``'s own target against ``reference`` on ``test_set`` (its recipe's ``targets``, as ``summary.md``
    checks them; ``teacher`` is what a target's reference "teacher" means), None where it sets none."""
    for t in group["runs"][0]["recipe"].get("targets") or []:
        ref = teacher if t["reference"] == TEACHER else t["reference"]
        if ref == reference and (not t.get("sets") or test_set in t["sets"]):
            return t["at_least_db"]
    return None


def answer_rows(groups: dict[str, dict], rows: list[tuple], sets: list[str], teacher: str) -> list[str]:
    """One row per comparison and test set; ``teacher``: the record that TEACHER stands for."""
    lines = ["| comparison | set | images | seeds | difference [95% CI] | verdict | target |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, ref in rows:
        ref_name = teacher if ref == TEACHER else ref
        missing = [n for n in (name, ref_name) if n not in groups]
        if missing:
            lines.append(f"| {name} - {ref_name} | - | - | - | - | not run yet: {', '.join(missing)} | - |")
            continue
        # the teacher's own training is what the students are measured against, not a side of the comparison
        mark = MIXED if ref != TEACHER and precision_differs(groups, (name, ref_name)) else ""
        for test_set in sets:
            d = pair_difference(groups[name], groups[ref_name], test_set)
            if d is None:
                continue
            target = recipe_target(groups[name], ref_name, teacher, test_set)
            verdict = target_verdict(target, d["mean"], d["lo"], d["hi"]) if target is not None else ""
            goal = f"{target:+.2f} dB: {verdict}" if target is not None else "-"
            lines.append(f"| {name} - {ref_name} | {test_set} | {d['images']} | {d['seeds'][0]}/{d['seeds'][1]} | "
                         f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] | {interval_verdict(d)}{mark} | {goal} |")
    return lines


def real_rain_rows(groups: dict[str, dict], recipe: str, spread_of: str) -> list[str]:
    """NIQE / BRISQUE of ``recipe`` beside the range over ``spread_of``'s seeds, per real-rain set."""
    lines = ["| set | metric | " + recipe + " | " + spread_of + " (mean [range over seeds]) | verdict |",
             "|---|---|---|---|---|"]  # fmt: skip
    missing = [n for n in (recipe, spread_of) if n not in groups]
    if missing:
        return lines + [f"| - | - | - | - | not run yet: {', '.join(missing)} |"]
    base, seeds = groups[spread_of], len(groups[spread_of]["seeds"])
    mark = MIXED if precision_differs(groups, (recipe, spread_of)) else ""
    for test_set, row in sorted(groups[recipe]["sets"].items()):
        spread = base["sets"].get(test_set, {})
        for metric in ("niqe", "brisque"):
            if metric not in row or metric not in spread:
                continue
            low, high = spread[f"{metric}_range"]
            value = row[metric]
            if seeds < 2:
                verdict = f"no spread yet ({seeds} seed of {spread_of})"
            else:
                verdict = ("inside the seed spread" if low <= value <= high else "outside the seed spread") + mark
            lines.append(f"| {test_set} | {metric} | {value:.3f} | {spread[metric]:.3f} [{low:.3f}, {high:.3f}] "
                         f"({seeds} seeds) | {verdict} |")
    return lines


def precisions(record: dict) -> str:
    """The autocast precision(s) ``record`` trained in, with the step each began at where it changed
    (``train.autocast``; ``no`` is fp32); ``?`` for records older than that field."""
    spans = (record.get("train") or {}).get("autocast")
    if not spans:
        return "?"
    names = ["fp32" if p == "no" else p for _, p in spans]
    return names[0] if len(spans) == 1 else ", ".join(f"{n} from step {s}" for (s, _), n in zip(spans, names))


def precision_differs(groups: dict[str, dict], names) -> bool:
    """Whether the runs of the recipes ``names`` trained in different precisions (records older than
    ``train.autocast`` do not count: theirs is unknown)."""
    return len({precisions(r) for n in names for r in groups[n]["runs"]} - {"?"}) > 1


def provenance_rows(groups: dict[str, dict]) -> tuple[list[str], list[str]]:
    """One row per record: how it was made; and the recipes whose seeds trained in different precisions."""
    lines = ["| record | seed | steps | trained in | machine, threads | commit |", "|---|---|---|---|---|---|"]
    mixed = []
    for name, group in sorted(groups.items()):
        runs = sorted(group["runs"], key=lambda r: r["recipe"]["seed"])
        for r in runs:
            commit = (r.get("commit") or "?")[:7] + (" (dirty)" if r.get("dirty") else "")
            lines.append(f"| {r['stem']} | {r['recipe']['seed']} | {(r.get('train') or {}).get('steps', '-')} | "
                         f"{precisions(r)} | {r.get('device', '?')}, {r.get('cpu_threads', '?')} | {commit} |")
        if precision_differs(groups, (name,)):
            mixed.append(name)
    return lines, mixed


def study_teacher(recipes: list[dict]) -> str | None:
    """The teacher the students learned from (``recipes`` from ``group_by_recipe``); None unless there is one."""
    stars = students_teachers(recipes)
    return next(iter(stars)) if len(stars) == 1 else None


def answers_markdown(records: list[dict], recipes: list[dict], teacher: str | None, note: str | None) -> str:
    """``results/study/answers.md``: ``recipes`` grouped from ``records``, ``teacher`` from ``study_teacher``,
    ``note`` the teacher's plateau verdict (``compress.plots.plateau_note``)."""
    groups = {g["stem"]: g for g in recipes}
    teacher = teacher or TEACHER
    sets = sorted({name for r in records for name, row in r.get("sets", {}).items() if "psnr_y_db" in row})
    out = ["# The study's questions, answered from the records so far", "",
           "Generated by `python -m benchmarks.study_answers` from `results/runs/*.json`. Each difference is PSNR "
           "(Y, dB) of the first recipe minus the second, averaged over each recipe's seeds per image, with a paired "
           "bootstrap 95% interval over the images (`verdict`: whether it excludes 0; `trained in different "
           "precisions`: the two recipes' runs did (last section), so the difference includes the precision's).",
           ""]  # fmt: skip
    if note:
        out += [note, ""]
    provenance, mixed = provenance_rows(groups)
    if mixed:
        out += [f"Seeds trained in different precisions (their seed spread includes the precision's effect; see "
                f"the last section): {', '.join(mixed)}.", ""]
    for question, rows, text in QUESTIONS:
        out += [f"## {question}", "", *answer_rows(groups, rows, sets, teacher), *(["", text] if text else []), ""]
    question, recipe, spread_of = REAL_RAIN
    out += [f"## {question}", ""] + real_rain_rows(groups, recipe, spread_of) + [""]
    out += ["## How each record was made", "", *provenance, "",
            "`trained in`: the autocast precision of each training step (`train.autocast`; `?`: a record made before "
            "records kept it). Latency is not compared here: `results/bench/study_latency.json` measures every "
            "final model side by side on one machine.", ""]
    return "\n".join(out)


def planned_recipes() -> list[str]:
    """Every recipe the questions compare (the study's runs), in the order they are asked."""
    names = [n for _, rows, _ in QUESTIONS for pair in rows for n in pair if n != TEACHER] + [REAL_RAIN[1], LONG]
    return list(dict.fromkeys(names))


def readme_block(recipes: list[dict], teacher: str | None, note: str | None) -> str:
    """The README's study results: one row per run that learned from the study ``teacher`` (students and controls,
    by MACs), its difference to the teacher per test set with the interval, and what is still missing; arguments
    as ``answers_markdown``'s."""
    if teacher is None:
        return "No study records yet: `benchmarks/study.sh` makes them."
    groups = {g["stem"]: g for g in recipes}
    teacher = groups[teacher]
    order = ["rain100L", "rain100H", "mcmaster_light", "mcmaster_heavy"]  # the rest after these, by name
    sets = sorted((n for n, row in teacher["sets"].items() if "psnr_y_db" in row),
                  key=lambda n: (order.index(n) if n in order else len(order), n))  # fmt: skip
    rows = sorted((g for g in recipes if teacher_of(g) == teacher["stem"]), key=lambda g: (-g["gmacs_256"], g["stem"]))
    head = ["| run | GMACs (256x256) | params (M) | seeds | " + " | ".join(sets) + " |", "|---" * (4 + len(sets)) + "|",
            f"| {teacher['stem']} (teacher, PSNR-Y dB) | {teacher['gmacs_256']:.2f} | {teacher['params_m']:.3f} | "
            f"{len(teacher['seeds'])} | " + " | ".join(f"{teacher['sets'][n]['psnr_y_db']:.2f}" for n in sets) + " |"]
    for g in rows:
        cells = []
        for test_set in sets:
            d = pair_difference(g, teacher, test_set)
            cells.append("-" if d is None else f"{d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]"
                         + (" (n.s.)" if interval_verdict(d) == "cannot be told from 0" else ""))
        kind = " (control)" if g["runs"][0]["recipe"].get("control") else ""
        head.append(f"| {g['stem']}{kind} | {g['gmacs_256']:.2f} | {g['params_m']:.3f} | {len(g['seeds'])} | "
                    + " | ".join(cells) + " |")
    planned = planned_recipes()
    wanted = {n: SEEDS if n in MAIN else 1 for n in planned}
    have = {n: len(groups[n]["seeds"]) if n in groups else 0 for n in planned}
    done = sum(min(have[n], wanted[n]) for n in planned)
    missing = [n if have[n] == 0 else f"{n} ({wanted[n] - have[n]} more seeds)" for n in planned if have[n] < wanted[n]]
    out = [f"Generated by `python -m benchmarks.study_answers --readme README.md` from `results/runs/`: "
           f"{done} of the study's {sum(wanted.values())} student and control records so far. Each cell is the run's "
           "PSNR-Y minus the teacher's in dB (seeds averaged per image) with its paired bootstrap 95% interval over "
           "the images; n.s.: the interval contains 0.", ""]
    if note:
        out += [note, ""]
    out += head
    out += ["", "Still to run: " + (", ".join(missing) if missing else "nothing") + ". The questions, controls and "
            "targets: [results/study/answers.md](results/study/answers.md); every difference: "
            "[results/summary.md](results/summary.md)."]
    return "\n".join(out)


def write_readme(path: Path, block: str) -> None:
    """Replace what lies between ``path``'s study-results markers by ``block``; refuses a README without them."""
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{path}: needs one line {BEGIN!r} and, after it, one {END!r} around the study's results "
                         "(the text between them is generated); add them where the results belong and run again")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    atomic_write(path, lambda p: Path(p).write_text(text[:start] + "\n" + block + "\n" + text[end:]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="holds runs/*.json; writes study/answers.md")
    parser.add_argument("--readme", type=Path, help=f"also rewrite this file's text between {BEGIN} and {END}")
    args = parser.parse_args(argv)
    records = read_records(args.results / "runs")
    if not records:
        raise SystemExit(f"{args.results / 'runs'}: no run records; run benchmarks/study.sh first")
    recipes = group_by_recipe(records)
    teacher = study_teacher(recipes)
    note = plateau_note(args.results / "study" / "plateau.json")
    if args.readme is not None:
        write_readme(args.readme, readme_block(recipes, teacher, note))
        print(f"rewrote the study results in {args.readme}")
    text = answers_markdown(records, recipes, teacher, note)
    out = args.results / "study" / "answers.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: Path(p).write_text(text))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

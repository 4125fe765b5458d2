"""Recipes, fit(), exact resume after SIGKILL, and two real CPU processes under accelerate launch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compress.recipe import RecipeError, load_recipe
from compress.train import lr_at
from drsformer import DRSformer

ROOT = Path(__file__).resolve().parents[1]
TINY = """
model: {preset: "tiny"}
data: {patch_size: 32, val_size: 32}
train: {steps: STEPS, batch_size: 2, lr: 1.0e-3, lr_hold_steps: 2, eval_every: 3, save_every: 2, log_every: 1}
"""


def tiny_recipe(tmp_path: Path, steps: int = 6, name: str = "teacher_test") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.replace("STEPS", str(steps)) + f'out_dir: "{tmp_path / "runs"}"\n')
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def test_recipe_errors_name_file_and_path(tmp_path):
    path = tiny_recipe(tmp_path)
    recipe = load_recipe(path, ["train.lr=5.0e-4", "eval.limit=3"])
    assert recipe.name == "teacher_test" and recipe.train.lr == 5e-4 and recipe.eval.limit == 3
    with pytest.raises(RecipeError, match=r"teacher_test.yaml.*\n  train.lrr: Extra inputs are not permitted"):
        load_recipe(path, ["train.lrr=1"])
    with pytest.raises(RecipeError, match=r"train.steps: Input should be a valid integer"):
        load_recipe(path, ["train.steps=many"])
    with pytest.raises(RecipeError, match=r"data: Value error, heaviness"):
        load_recipe(path, ["data.heaviness=[0.8, 0.2]"])
    with pytest.raises(RecipeError, match="prune/distill/lora need a teacher"):
        load_recipe(path, ["distill={}"])
    prune50 = ROOT / "recipes" / "prune50_width.yaml"
    with pytest.raises(RecipeError, match=r"prune50_width.yaml.*\n  prune: Value error, max_ratio caps a global"):
        load_recipe(prune50, ["prune.max_ratio=0.5"])
    with pytest.raises(RecipeError, match="missing.yaml: recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


def test_official_schedule_is_the_default():
    recipe = load_recipe(ROOT / "recipes" / "teacher_full.yaml")
    t = recipe.train
    assert (t.steps, t.batch_size, t.lr, t.lr_hold_steps, t.lr_min) == (300_000, 16, 3e-4, 92_000, 1e-6)
    assert (t.weight_decay, t.betas, t.grad_clip, recipe.seed, recipe.data.patch_size) == (
        1e-4,
        (0.9, 0.999),
        0.01,
        100,
        128,
    )
    assert recipe.model.config().levels[3].width == 384  # the paper model
    assert lr_at(t, 0) == lr_at(t, 91_999) == 3e-4
    assert lr_at(t, 92_000 + 104_000) == pytest.approx((3e-4 + 1e-6) / 2)
    assert lr_at(t, 300_000) == pytest.approx(1e-6)


def assert_same_training(weights: dict, reference: dict, label: str, lr: float = 1e-3) -> None:
    """Two trainings that differ only in float rounding (compiled kernels, accumulation or process order).
    AdamW turns a rounding difference of a near-zero gradient into a step-sized one, so a few single weights
    may differ by up to about ``lr`` (how many depends on the CPU's kernels); a real difference (a wrong
    gradient, a lost micro-batch) moves most weights of a tensor by about ``lr``. So: in every tensor the
    median difference is under 1% of ``lr``, and over all weights the mean is under 1e-6."""
    assert weights.keys() == reference.keys()
    for name, ref in reference.items():
        median = (weights[name] - ref).abs().median().item()
        assert median < 0.01 * lr, f"{label}: {name}: median weight difference {median:.2e}"
    diff = torch.cat([(weights[k] - v).abs().flatten() for k, v in reference.items()])
    assert diff.mean().item() < 1e-6, f"{label}: mean weight difference {diff.mean().item():.2e}"


def run_teacher(recipe: Path, *extra: str, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "compress" / "train_teacher.py"), str(recipe), *extra]
    return subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def finish(proc: subprocess.Popen) -> str:
    out = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    return out


def test_fit_trains_and_exports_a_plain_drsformer(tmp_path):
    # a validation off the log_every grid (step 2) still records that step's loss in the curve
    finish(run_teacher(tiny_recipe(tmp_path, steps=3), "--set", "train.eval_every=2", "--set", "train.log_every=5"))
    run = tmp_path / "runs" / "teacher_test"
    summary = json.loads((run / "summary.json").read_text())
    curve = json.loads((run / "curve.json").read_text())
    assert [p["step"] for p in curve] == [2, 3] and all(0 < p["loss"] < 1 for p in curve)
    mean = {p["step"]: sum(v["psnr_y_db"] for v in p["val"].values()) / len(p["val"]) for p in curve}
    assert summary["steps"] == 3 and summary["best_step"] == max(mean, key=mean.get) and summary["ranks"] == 1
    assert set(summary["val"]) == {"synthetic_light", "synthetic_heavy"}
    model = DRSformer.from_pretrained(run / "final")
    assert model(torch.rand(1, 3, 20, 28)).shape == (1, 3, 20, 28)
    progress = json.loads((run / "state" / "progress.json").read_text())
    assert progress["step"] == 3 and progress["recipe"]["train"]["steps"] == 3
    assert not list(run.glob("*.tmp"))
    # resuming the finished run trains, validates and rewrites nothing (a study script resumes every run)
    stamps = {f: f.stat().st_mtime_ns for f in run.rglob("*") if f.is_file() and f.name != ".lock"}
    out = finish(run_teacher(tiny_recipe(tmp_path, steps=3), "--resume", "--set", "train.eval_every=2",
                             "--set", "train.log_every=5"))  # fmt: skip
    assert "finished its 3 steps; nothing to resume" in out and json.loads(out[out.index("{"):])["steps"] == 3
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    steps = 8
    straight, killed = tmp_path / "a", tmp_path / "b"
    straight.mkdir(), killed.mkdir()
    finish(run_teacher(tiny_recipe(straight, steps)))
    reference = load_file(straight / "runs" / "teacher_test" / "final" / "model.safetensors")

    recipe = tiny_recipe(killed, steps)
    proc = run_teacher(recipe)
    state = killed / "runs" / "teacher_test" / "state" / "progress.json"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = json.loads(state.read_text())["step"]
    assert stopped_at < steps, "the run finished before it could be killed"
    out = finish(run_teacher(recipe, "--resume"))
    assert f"at step {stopped_at}" in out
    resumed = load_file(killed / "runs" / "teacher_test" / "final" / "model.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_compiled_training_matches_eager(tmp_path):
    """``train.compile`` (through accelerate's dynamo plugin): the same weights as eager within float
    tolerance. The aot_eager backend traces forward and backward as inductor does, without its minutes of
    kernel generation on a CPU."""
    weights = {}
    for label, extra in (("eager", []), ("compiled", ["--set", "train.compile=true",
                                                      "--set", "train.compile_backend=aot_eager"])):  # fmt: skip
        folder = tmp_path / label
        folder.mkdir()
        finish(run_teacher(tiny_recipe(folder, steps=2), *extra))
        weights[label] = load_file(folder / "runs" / "teacher_test" / "final" / "model.safetensors")
    assert_same_training(weights["compiled"], weights["eager"], "compiled")


def test_learning_curve_plateau_needs_every_set_flat_over_half_again_the_steps():
    from benchmarks.learning_curve import plateau

    def point(step, a, b):
        return {"step": step, "val": {"a": {"psnr_y_db": a}, "b": {"psnr_y_db": b}}}

    curve = [point(500, 20.0, 25.0), point(1000, 21.0, 26.0), point(1500, 21.05, 26.5), point(2000, 21.1, 26.55),
             point(3000, 21.12, 26.58)]  # fmt: skip
    verdict = plateau(curve)
    assert [c["from"] for c in verdict["checks"]] == [500, 1000, 1500, 2000]
    assert [c["plateau"] for c in verdict["checks"]] == [False, False, True, True]  # 1000 -> 1500: b gains 0.5
    assert verdict["plateau_at"] == 1500
    assert plateau(curve[:2])["plateau_at"] is None


def test_learning_curve_continued_run_follows_the_base_and_decides_its_end(tmp_path):
    from benchmarks.learning_curve import continued, main

    def point(step, a):
        return {"step": step, "val": {"a": {"psnr_y_db": a}}}

    base = [point(1000, 20.0), point(2000, 21.0)]  # the base's own last half never looks flat (decay gains)
    more = [point(500, 21.02), point(1000, 21.05)]  # a second cycle of 50% more steps from 2000
    joined = continued(base, more)
    assert [p["step"] for p in joined] == [1000, 2000, 2500, 3000] and joined[-1]["continued"]
    for name, points in (("base", base), ("more", more)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "curve.json").write_text(json.dumps(points))
    main([str(tmp_path / "base"), "--continued", str(tmp_path / "more"), "--out", str(tmp_path / "out")])
    verdict = json.loads((tmp_path / "out" / "plateau.json").read_text())
    assert [(c["from"], c["to"], c["plateau"]) for c in verdict["checks"]] == [(1000, 2000, False), (2000, 3000, True)]
    assert verdict["plateau_at"] == 2000 and (tmp_path / "out" / "curve.png").stat().st_size > 0
    assert verdict["plateau_run"] == "base"


def test_learning_curve_chain_of_cycles_can_only_plateau_at_a_segment_end(tmp_path):
    """A base run of 4000 steps, a first plateau run of 2000 more that still gains, a second of 3000 that does not:
    the plateau is the first run's end (6000), not a flat check inside the base or one across a restart."""
    from benchmarks.learning_curve import main, plateau

    def point(step, a):
        return {"step": step, "val": {"a": {"psnr_y_db": a}}}

    base = [point(1000, 20.0), point(2000, 21.0), point(3000, 21.02), point(4000, 21.5)]  # flat 2000 -> 3000
    first = [point(1000, 21.1), point(2000, 21.8)]  # its high learning rate dips below step 3000, then +0.3 dB
    second = [point(1000, 21.7), point(3000, 21.85)]  # +0.05 dB over 50% more steps: the plateau at 6000
    for name, points in (("base", base), ("first", first), ("second", second)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "curve.json").write_text(json.dumps(points))
    assert plateau(base)["plateau_at"] == 2000  # one run alone: any validation step can be its plateau
    args = [str(tmp_path / "base"), "--continued", str(tmp_path / "first"), "--out", str(tmp_path / "one")]
    main(args)
    verdict = json.loads((tmp_path / "one" / "plateau.json").read_text())
    spans = [(c["from"], c["to"]) for c in verdict["checks"]]
    assert (3000, 5000) not in spans and (2000, 3000) in spans  # 3000 -> 5000 would span the restart at 4000
    assert verdict["restarts"] == [4000] and verdict["plateau_at"] is None  # 4000 -> 6000: +0.3 dB
    assert verdict["plateau_run"] is None and verdict["last_run"] == "first"
    assert verdict["last_step"] == 6000  # the chain's steps so far (study.sh's teacher steps without a plateau)
    main(args + ["--continued", str(tmp_path / "second"), "--out", str(tmp_path / "two")])
    verdict = json.loads((tmp_path / "two" / "plateau.json").read_text())
    assert verdict["restarts"] == [4000, 6000] and verdict["plateau_at"] == 6000
    assert verdict["plateau_run"] == "first" and verdict["last_run"] == "second"  # benchmarks/study.sh's teacher
    assert [c["plateau"] for c in verdict["checks"] if c["from"] == 6000] == [True]


def test_learning_curve_records_decide_the_plateau_over_every_test_image(tmp_path, capsys):
    """The crops say the first plateau run still gains (+0.3 dB); its record over every image says +0.05 dB, so with
    --records the teacher's end is the plateau, with the interval of each set's gain. A record of other images, or
    a missing record, is refused before anything is written."""
    from benchmarks.learning_curve import RecordError, main

    def point(step, a):
        return {"step": step, "val": {"a": {"psnr_y_db": a}}}

    def record(stem, gain, names=20):
        rows = [{"name": f"{i}.png", "psnr_y_db": 30.0 + 0.1 * i + gain * (1 + 0.5 * (-1) ** i)} for i in range(names)]
        real = {"niqe": 4.0, "per_image": [{"name": "r.png", "niqe": 4.0}]}
        return {"stem": stem, "sets": {"a": {"psnr_y_db": 0.0, "per_image": rows}, "real": real}}

    for name, points in (("base", [point(1000, 20.0), point(2000, 21.0)]),
                         ("more", [point(500, 20.8), point(1000, 21.3)])):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "curve.json").write_text(json.dumps(points))
    records = tmp_path / "records"
    records.mkdir()
    (records / "base.json").write_text(json.dumps(record("base", 0.0)))
    args = [str(tmp_path / "base"), "--continued", str(tmp_path / "more"), "--records", str(records)]
    with pytest.raises(RecordError, match=r"more.json: no record of run more; make it first"):
        main(args + ["--out", str(tmp_path / "missing")])
    (records / "more.json").write_text(json.dumps(record("more", 0.05, names=19)))
    with pytest.raises(RecordError, match="more and base scored different images of a"):
        main(args + ["--out", str(tmp_path / "partial")])
    assert not (tmp_path / "missing").exists() and not (tmp_path / "partial").exists()
    (records / "more.json").write_text(json.dumps(record("more", 0.05)))
    main(args + ["--out", str(tmp_path / "out")])
    verdict = json.loads((tmp_path / "out" / "plateau.json").read_text())
    assert verdict["validation_plateau_at"] is None  # the crops: 2000 -> 3000 gains 0.3 dB
    assert verdict["plateau_at"] == 2000 and verdict["plateau_run"] == "base"
    (link,) = verdict["records"]
    assert set(link["sets"]) == {"a"} and link["sets"]["a"]["images"] == 20  # NIQE-only sets are not compared
    assert link["sets"]["a"]["gain_db"] == pytest.approx(0.05) and link["plateau"]
    lo, hi = link["sets"]["a"]["ci95_db"]
    assert 0.0 < lo < 0.05 < hi  # the gain varies over images: a real interval around it
    (records / "more.json").write_text(json.dumps(record("more", 0.15)))
    capsys.readouterr()
    main(args + ["--out", str(tmp_path / "gains")])
    verdict = json.loads((tmp_path / "gains" / "plateau.json").read_text())
    assert verdict["plateau_run"] is None and not verdict["records"][0]["plateau"]
    assert verdict["projection"]["links_more"] is None  # one link: no trend to project
    assert "projection: none: one link: no trend yet" in capsys.readouterr().out  # says so, not "None steps"


def test_learning_curve_never_writes_over_a_run_and_refuses_a_curve_that_is_not_the_runs_own(tmp_path):
    """The joined curve once went to results/teacher_study (a saved run): restored, the teacher's curve ran to the
    chain's end and the next join counted every link twice (restarts at 12000 and 16000, not 8000 and 12000).
    Both are refused before anything is written: an --out holding another run, and a curve that outruns its run's
    summary; a run alone still plots into its own folder, its curve untouched."""
    from benchmarks.learning_curve import CurveError, main

    def point(step, a):
        return {"step": step, "val": {"a": {"psnr_y_db": a}}}

    for name, points, steps in (("base", [point(1000, 20.0), point(2000, 21.0)], 2000),
                                ("more", [point(500, 21.1), point(1000, 21.3)], 1000)):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "curve.json").write_text(json.dumps(points))
        (tmp_path / name / "summary.json").write_text(json.dumps({"steps": steps}))
    base, more = tmp_path / "base", tmp_path / "more"
    own = (base / "curve.json").read_text()
    with pytest.raises(CurveError, match=r"--out .*base: holds a training run \(summary.json\)"):
        main([str(more), "--out", str(base)])
    with pytest.raises(CurveError, match="holds a training run"):
        main([str(base), "--continued", str(more), "--out", str(base / ".." / "more")])  # the same folder, spelt apart
    assert (base / "curve.json").read_text() == own and not (base / "plateau.json").exists()
    main([str(base), "--continued", str(more), "--out", str(tmp_path / "chain")])
    assert json.loads((tmp_path / "chain" / "plateau.json").read_text())["restarts"] == [2000]
    (base / "curve.json").write_text((tmp_path / "chain" / "curve.json").read_text())  # the joined curve over it
    with pytest.raises(CurveError, match=r"base/curve.json ends at step 3000, but its run trained 2000 steps"):
        main([str(base), "--continued", str(more), "--out", str(tmp_path / "again")])
    assert not (tmp_path / "again").exists()
    (base / "curve.json").write_text(own)
    main([str(base)])  # a run alone: plot and verdict beside its curve, which stays its own
    assert (base / "curve.json").read_text() == own and (base / "plateau.json").is_file()


def test_plateau_projection_from_the_records_gains_link_by_link():
    """Without a plateau, the records' last two links say how many more the trend needs: a set gaining 0.6 then
    0.4 dB (ratio 2/3) falls under 0.1 dB after 4 more links (0.4 x (2/3)^4 = 0.079, ^3 = 0.119); a set already
    under needs none; the steps are the chain's 1.5x growth. A gain that does not shrink has no projection."""
    from benchmarks.learning_curve import projection

    def link(**gains):
        return {"sets": {k: {"gain_db": v} for k, v in gains.items()}}

    got = projection([link(a=0.6, b=0.3), link(a=0.4, b=0.05)], chain_steps=18000)
    assert got["sets"]["a"]["links_more"] == 4 and got["sets"]["b"]["links_more"] == 0
    assert got["links_more"] == 4 and got["steps_more"] == round(18000 * (1.5**4 - 1))
    assert got["sets"]["a"]["ratio"] == pytest.approx(2 / 3)
    assert projection([link(a=0.4), link(a=0.2)], 100)["links_more"] == 2  # 0.2 x 0.5^2 = 0.05; ^1 = 0.1 is not under
    for stalled in ([link(a=0.3), link(a=0.35)], [link(a=-0.1), link(a=0.2)]):
        assert projection(stalled, 100)["links_more"] is None
    assert projection([link(a=0.3)], 100)["links_more"] is None


def test_bf16_training_runs_on_the_cpu_and_validates_in_fp32(tmp_path):
    """``train.mixed_precision=bf16`` through accelerate on the CPU; validation ignores the autocast forward
    that ``prepare`` puts on the instance (the curve stays comparable with fp32 points and the records)."""
    import types

    from compress.train import native_bf16, validate

    finish(run_teacher(tiny_recipe(tmp_path, steps=2), "--set", "train.mixed_precision=bf16"))
    run = tmp_path / "runs" / "teacher_test"
    progress = json.loads((run / "state" / "progress.json").read_text())
    assert progress["recipe"]["train"]["mixed_precision"] == "bf16" and progress["autocast"] == [[0, "bf16"]]
    # resumed for two more steps with auto: fp32 unless this CPU has bf16 kernels; the state says which steps ran
    # in which precision, and so does the record
    finish(run_teacher(tiny_recipe(tmp_path, steps=4), "--resume", "--set", "train.mixed_precision=auto"))
    expected = [[0, "bf16"]] if native_bf16() else [[0, "bf16"], [2, "no"]]
    assert json.loads((run / "state" / "progress.json").read_text())["autocast"] == expected
    model = DRSformer.from_pretrained(run / "final").eval()
    sets = {"a": (torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24))}
    fp32 = validate(model, sets, torch.device("cpu"))
    plain_forward = model.forward

    def autocast_forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return plain_forward(x)

    model.forward = types.MethodType(autocast_forward, model)  # as accelerate's prepare does
    with torch.no_grad():
        assert not torch.equal(model(sets["a"][0]).float(), plain_forward(sets["a"][0]))
    assert validate(model, sets, torch.device("cpu")) == fp32


def test_mixed_precision_auto_is_bf16_only_where_it_runs_natively(monkeypatch, tmp_path):
    """On an AVX2-only CPU bf16 autocast falls back to reference kernels (a study-teacher step: 51 s against
    5.5 s in fp32); ``auto`` trains in bf16 only where oneDNN (or CUDA) has bf16 kernels, and an explicit bf16
    there warns, naming the key and what to set."""
    import warnings

    import compress.train as T

    for native, auto in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(T, "native_bf16", lambda native=native: native)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning for auto, no, or a native bf16
            assert T.autocast_precision("auto") == auto and T.autocast_precision("no") == "no"
            if native:
                assert T.autocast_precision("bf16") == "bf16"
    # asked for explicitly where it is not native: kept, with a warning naming the device and what to set
    for cuda, device in ((False, "a CPU without native bf16"), (True, "a CUDA GPU without bf16 support")):
        monkeypatch.setattr(T.torch.cuda, "is_available", lambda cuda=cuda: cuda)
        with pytest.warns(UserWarning, match=f"mixed_precision: bf16 on {device}.*auto or no"):
            assert T.autocast_precision("bf16") == "bf16"
    monkeypatch.undo()
    # an unquoted `no` is YAML's false: read as "no", in a file and on the command line
    path = tiny_recipe(tmp_path)
    path.write_text(path.read_text().replace("train: {", "train: {mixed_precision: no, "))
    assert load_recipe(path).train.mixed_precision == "no"
    assert load_recipe(tiny_recipe(tmp_path), ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(RecipeError, match="mixed_precision"):
        load_recipe(tiny_recipe(tmp_path), ["train.mixed_precision=yes"])

"""Bad input and faults: refused before any work with a message naming the file or key; nothing lost,
overwritten or recorded as a result when a run fails."""

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
from PIL import Image

from compress import evaluate, run
from compress.console import UserError
from compress.data import DataError, read_image
from compress.recipe import RecipeError, load_recipe
from compress.train import NonFiniteLoss, RunDirError, claim_run_dir, release_run_dir
from compress.train_teacher import train_teacher
from drsformer import DRSformer, DRSformerConfig
from drsformer.io import write_json
from drsformer.model import CheckpointError
from tests.test_train import env, finish, run_teacher, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
RAIN100L = ROOT.parent / "shared" / "data" / "rain100L"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return DRSformer(DRSformerConfig.preset("tiny")).save_pretrained(tmp_path_factory.mktemp("model"))


def paired_set(root: Path, size: tuple[int, int] = (24, 20), count: int = 2) -> Path:
    for sub in ("input", "target"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", size, (40 * i, 90, 200)).save(root / sub / f"{i}.png")
    return root


def test_nan_loss_stops_training_and_saves_nothing(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path, steps=6), ["train.lr=1.0e6", "train.grad_clip=null"])
    with pytest.raises(NonFiniteLoss, match=r"step \d+: the loss is not finite .*train.lr"):
        train_teacher(recipe, show=False)
    run_dir = recipe.run_dir
    assert not (run_dir / "final").exists() and not (run_dir / "best").exists()
    if (run_dir / "state").exists():  # a state from before the bad step may stay, never one after it
        assert json.loads((run_dir / "state" / "progress.json").read_text())["step"] < 6


def test_non_finite_scores_write_no_record(tmp_path, model_dir, monkeypatch):
    monkeypatch.setattr(run, "evaluate", lambda *a, **k: {"set": {"images": 1, "psnr_y_db": float("nan")}})
    recipe = load_recipe(tiny_recipe(tmp_path, steps=1))
    with pytest.raises(UserError, match="non-finite scores .*set.psnr_y_db.*no record"):
        run.run_recipe(recipe, "nan_run", run.Console(), results=tmp_path / "results")
    assert not list((tmp_path / "results").rglob("*.json"))
    with pytest.raises(ValueError):  # and strict JSON in every file the project writes
        write_json(tmp_path / "x.json", {"psnr": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_a_finished_run_is_continued_or_replaced_only_when_asked(tmp_path):
    recipe_path = tiny_recipe(tmp_path, steps=2)
    finish(run_teacher(recipe_path))
    final = tmp_path / "runs" / "teacher_test" / "final" / "model.safetensors"
    before = final.stat().st_mtime_ns
    recipe = load_recipe(recipe_path)
    with pytest.raises(RunDirError, match="already holds a run .*finished.*--resume.*--overwrite"):
        train_teacher(recipe, show=False)
    assert final.stat().st_mtime_ns == before
    changed = load_recipe(recipe_path, ["model.preset=tiny_nomefc", "data.patch_size=48", "train.steps=3"])
    with pytest.raises(RunDirError, match=r"--resume with a recipe that changes .*data.patch_size, model.preset"):
        train_teacher(changed, resume=True, show=False)
    train_teacher(load_recipe(recipe_path, ["train.steps=3"]), resume=True, show=False)  # more steps: allowed
    train_teacher(load_recipe(recipe_path, ["train.steps=1"]), overwrite=True, show=False)
    assert json.loads((tmp_path / "runs" / "teacher_test" / "summary.json").read_text())["steps"] == 1


def test_second_writer_is_refused_at_once_and_a_killed_holder_frees_the_folder(tmp_path):
    recipe_path = tiny_recipe(tmp_path, steps=400)
    proc = run_teacher(recipe_path)
    lock = tmp_path / "runs" / "teacher_test" / ".lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    try:
        started = time.perf_counter()
        with pytest.raises(RunDirError, match=f"in use by process {proc.pid}"):
            claim_run_dir(lock.parent, load_recipe(recipe_path), resume=True, overwrite=False)
        assert time.perf_counter() - started < 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    claim_run_dir(lock.parent, load_recipe(recipe_path), resume=True, overwrite=False)  # the kernel freed the lock
    release_run_dir(lock.parent)


def test_unwritable_run_folder_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    recipe = load_recipe(tiny_recipe(tmp_path, steps=2), [f"out_dir={blocker / 'runs'}"])
    started = time.perf_counter()
    with pytest.raises(DataError, match="the run folder .* cannot write there"):
        train_teacher(recipe, show=False)
    assert time.perf_counter() - started < 5  # refused, not found out at the first save


def test_derain_never_writes_over_its_input_or_existing_files(tmp_path, model_dir):
    folder = paired_set(tmp_path / "set") / "input"
    original = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(DataError, match="output folder is the input folder"):
        evaluate.main(["derain", str(model_dir), str(folder), str(folder / ".." / "input")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "0.png").write_bytes(b"mine")
    with pytest.raises(DataError, match="1 output file.* exist already .*--overwrite"):
        evaluate.main(["derain", str(model_dir), str(folder), str(out)])
    assert (out / "0.png").read_bytes() == b"mine"
    evaluate.main(["derain", str(model_dir), str(folder), str(out), "--overwrite"])
    assert (out / "0.png").read_bytes() != b"mine"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == original
    mode = (out / "1.png").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # the umask's mode, not mkstemp's 0600


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("", [], "the recipe is empty"),
        ("train: {steps: 2}\n", ["train.lr=[1"], r"--set 'train.lr=\[1': the value is not valid YAML"),
        ("teacher: {path: x, preset: huge}\nprune: {target_macs: 0.5}\n", [], "teacher: Value error, preset must be"),
    ],
    ids=["empty", "set_yaml", "teacher_preset"],
)
def test_recipe_refusals(tmp_path, text, overrides, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(tmp_path / "r.yaml", overrides)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"r.yaml": "base: gone.yaml\n"}, r"gone.yaml: recipe file not found \(the base of .*r.yaml\)"),
        ({"r.yaml": "base: b.yaml\n", "b.yaml": "base: r.yaml\n"}, r"b.yaml: base: r.yaml extends itself"),
        ({"r.yaml": "base: [b.yaml]\n"}, r"r.yaml: base: expected the file name of the recipe"),
        ({"r.yaml": "base: b.yaml\n", "b.yaml": "- 1\n"}, r"b.yaml: expected a mapping at the top level"),
        ({"r.yaml": "base: b.yaml\n", "b.yaml": "train: {lrr: 1}\n"},
         r"r.yaml \(with its base .*b.yaml\): 1 problem\(s\)\n  train.lrr: Extra inputs"),  # where to look
    ],
    ids=["missing", "cycle", "not_a_name", "base_not_a_mapping", "bad_key_in_base"],
)
def test_recipe_base_refusals(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(tmp_path / "r.yaml")


def test_score_refusals_name_the_file(tmp_path, model_dir):
    good = paired_set(tmp_path / "good")
    with pytest.raises(SystemExit):  # argparse: --limit must be positive
        evaluate.main(["score", str(model_dir), "--paired", f"g={good}", "--limit", "0"])
    small = paired_set(tmp_path / "small", size=(8, 8))
    with pytest.raises(DataError, match=r"image 0.png: SSIM needs images of at least 11x11"):
        evaluate.main(["score", str(model_dir), "--paired", f"s={small}"])
    with pytest.raises(DataError, match="--real .*is not a folder"):
        evaluate.main(["score", str(model_dir), "--paired", f"g={good}", "--real", f"r={tmp_path / 'nope'}"])
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(DataError, match="--out .* cannot write there"):
        evaluate.main(["score", str(model_dir), "--paired", f"g={good}", "--out", str(blocker / "x" / "r.json")])
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    (cut / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut/model.safetensors: not a readable safetensors file"):
        DRSformer.from_pretrained(cut)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert tuple(read_image(tmp_path / "rotated.jpg").shape) == (3, 30, 20)


def test_user_errors_are_one_short_message_without_traceback(tmp_path):
    cmd = [sys.executable, "-m", "compress.run", str(tmp_path / "missing.yaml")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "missing.yaml: recipe file not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3
    proc = subprocess.run(cmd + ["--debug"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "Traceback" in proc.stderr

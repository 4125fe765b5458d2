"""Two real gloo CPU processes under ``accelerate launch``: a distillation run (adapters, attention maps, LoRA,
width pruning; synthetic, paired and real unlabelled patches mixed) stays bit-identical across ranks and writes
one record; gradient accumulation and processes
split a batch without changing the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drsformer import DRSformer, DRSformerConfig
from tests.test_train import assert_same_training, env, finish, run_teacher, tiny_recipe

pytestmark = pytest.mark.xdist_group("multiprocess")  # one worker builds the launched run once
ROOT = Path(__file__).resolve().parents[1]
RAIN100L = ROOT.parent / "shared" / "data" / "rain100L"
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
          "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]  # fmt: skip


def launch(tmp_path: Path, script: str, *args: str) -> str:
    environment = {**env(), "ACCELERATE_USE_CPU": "true", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([*LAUNCH, str(ROOT / "compress" / script), *args], cwd=ROOT, capture_output=True,
                          env=environment, timeout=600)  # fmt: skip
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, out[-4000:]
    return out


DISTILL = """
teacher: {{path: "{teacher}"}}
prune: {{criterion: "l1", ratios: {{head_channels: 0.5, ffn: 0.5, width: 0.25}}}}
distill: {{feature_weight: 0.5, attention_weight: 0.1, taps: ["encoder_level1", "latent", "decoder_level1"]}}
lora: {{rank: 2, targets: ["attn.qkv"]}}
data: {{sources: [{{kind: synthetic, backgrounds: ["builtin"]}}, {{kind: paired, root: "{rain100H}"}}], patch_size: 32,
        val_size: 32, real_rain: ["{real}"], real_rain_fraction: 0.25}}
train: {{steps: 3, batch_size: 4, lr: 1.0e-3, lr_hold_steps: 1, eval_every: 3, save_every: 3, log_every: 1}}
eval: {{paired: {{rain100L: "{rain100L}"}}, limit: 3, latency_size: 32, latency_repeats: 1}}
out_dir: "{out}"
"""


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> Path:
    if not RAIN100L.is_dir():
        pytest.skip("../shared/data/rain100L is not there")
    tmp = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    DRSformer(DRSformerConfig.preset("tiny")).save_pretrained(tmp / "teacher")
    recipe = tmp / "student_ddp.yaml"
    recipe.write_text(DISTILL.format(teacher=tmp / "teacher", rain100L=RAIN100L, rain100H=RAIN100L.parent / "rain100H",
                                     real=RAIN100L.parent / "real_rain" / "sirr147", out=tmp / "runs"))  # fmt: skip
    launch(tmp, "run.py", str(recipe), "--results", str(tmp / "results"))
    return tmp


def test_distillation_ranks_stay_bit_identical(distilled):
    summary = json.loads((distilled / "runs" / "student_ddp" / "summary.json").read_text())
    assert summary["ranks"] == 2 and len(summary["rank_weight_digests"]) == 2
    # student, LoRA and adapters all-reduced and clipped alike: every trained tensor is the same on both ranks
    assert summary["rank_weight_digests"][0] == summary["rank_weight_digests"][1]
    assert summary["rank_first_patch_sums"][0] != summary["rank_first_patch_sums"][1]  # each its own patches


def test_two_process_run_writes_one_record_with_every_image(distilled):
    records = list((distilled / "results").glob("*/*.json"))
    assert len(records) == 1, records
    record = json.loads(records[0].read_text())
    assert record["status"] == "ok" and record["train"]["processes"] == 2
    rows = record["sets"]["rain100L"]["per_image"]  # rank 0 scored images 0 and 2, rank 1 image 1: gathered in order
    assert [r["name"] for r in rows] == sorted(p.name for p in (RAIN100L / "input").iterdir())[:3]
    assert record["sets"]["rain100L"]["psnr_y_db"] == pytest.approx(sum(r["psnr_y_db"] for r in rows) / 3)


def test_accumulation_and_processes_split_a_batch_without_changing_it(tmp_path):
    """1 process x 16, 1 process x 4 micro-batches of 4, 2 processes x 2 micro-batches of 4: the same weights."""
    finals = {}
    for label, extra in (("one", []), ("accum", ["--set", "train.grad_accum=4"])):
        folder = tmp_path / label
        folder.mkdir()
        finish(run_teacher(tiny_recipe(folder, steps=2), "--set", "train.batch_size=16", *extra))
        finals[label] = folder
    folder = tmp_path / "ddp"
    folder.mkdir()
    launch(folder, "train_teacher.py", str(tiny_recipe(folder, steps=2)), "--set", "train.batch_size=16",
           "--set", "train.grad_accum=2")  # fmt: skip
    finals["ddp"] = folder
    summary = json.loads((folder / "runs" / "teacher_test" / "summary.json").read_text())
    assert summary["rank_weight_digests"][0] == summary["rank_weight_digests"][1]
    weights = {k: load_file(f / "runs" / "teacher_test" / "final" / "model.safetensors") for k, f in finals.items()}
    for label in ("accum", "ddp"):
        assert_same_training(weights[label], weights["one"], label)
    torch.manual_seed(100)  # the recipe's seed: the weights the three runs started from
    initial = DRSformer(DRSformerConfig.preset("tiny")).state_dict()
    moved = max((weights["one"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3  # two steps at lr 1e-3 moved the weights far beyond the tolerance above
    with pytest.raises(AssertionError, match="median weight difference"):  # two steps of training fail the check
        assert_same_training(initial, weights["one"], "untrained")

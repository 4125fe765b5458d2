"""compress.measure: the paper's counts, and the analytic MACs against torch's FlopCounterMode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from compress.measure import count_macs, count_params, macs_by_part
from drsformer import DRSformer, DRSformerConfig, topk_counts
from drsformer.config import EXPERT_OPS
from tests.literal_drsformer import LiteralDRSformer
from tests.test_model import nonuniform_config


def traced_macs(model, x) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2  # FlopCounterMode counts a MAC as 2 FLOPs


@pytest.mark.parametrize("preset,params,gmacs", [("full", 33_655_424, 243.0), ("nomefc", 32_610_304, 175.4)])
def test_paper_counts(preset, params, gmacs):
    cfg = DRSformerConfig.preset(preset)
    with torch.device("meta"):
        assert count_params(DRSformer(cfg)) == params
    assert round(count_macs(cfg, 256, 256) / 1e9, 1) == gmacs


def test_mefc_and_part_shares_of_full_model():
    """../shared/DRSFORMER.md: MEFC holds 28% of the MACs (fvcore)."""
    parts = macs_by_part(DRSformerConfig.preset("full"))
    mefc = parts["encoder_level0"] + parts["refinement"]
    assert round(mefc / sum(parts.values()), 2) == 0.28


@pytest.mark.parametrize("kwargs", [{"num_blocks": (1, 1, 1, 2)}, {"mefc": False, "num_blocks": (2, 1, 1, 1)}])
def test_analytic_macs_equal_flop_counter_on_literal_forward(kwargs):
    kwargs = dict(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 4, 8)) | kwargs
    literal = LiteralDRSformer(**kwargs)
    x = torch.rand(1, 3, 32, 40)
    assert count_macs(DRSformerConfig.from_official_kwargs(**kwargs), 32, 40) == traced_macs(literal, x)


def test_analytic_macs_on_nonuniform_student():
    """On a pruned-style config, against the fast forward's trace (2 attention matmuls, not 5; folded MEFC)."""
    cfg = nonuniform_config()
    h, w = 40, 32
    pixels = {
        "encoder_level1": h * w,
        "encoder_level2": h * w // 4,
        "encoder_level3": h * w // 16,
        "latent": h * w // 64,
        "decoder_level3": h * w // 16,
        "decoder_level2": h * w // 4,
        "decoder_level1": h * w,
    }
    correction = 0
    for name, level in zip(pixels, cfg.levels):
        for b in level.blocks:
            # the fast TKSA: 3 fewer (c x c) @ (c x hw) products, plus the (c x 4) @ (4 x kmax) mixing matmul
            mixing = b.heads * b.head_dim * 4 * topk_counts(b.head_dim)[-1]
            correction += 3 * b.heads * b.head_dim**2 * pixels[name] - mixing
    # the fast MEFC folds each expert's last 1x1 conv (c x c over the image) into the step's output conv: one
    # (c x c) @ (c x c) product instead (the pooling op has no 1x1 conv)
    for mefc, c in ((cfg.encoder_mefc, cfg.levels[0].width), (cfg.refinement_mefc, cfg.levels[-1].width)):
        for ops in mefc.ops if mefc is not None else ():
            folded = sum(EXPERT_OPS[j][0] != "avg" for j in ops)
            correction += folded * (c * c * h * w - c**3)
    assert count_macs(cfg, h, w) - correction == traced_macs(DRSformer(cfg), torch.rand(1, 3, h, w))


def test_macs_follow_padding():
    cfg = DRSformerConfig.preset("tiny")
    assert count_macs(cfg, 33, 47) == count_macs(cfg, 40, 48)


def test_gpu_benchmark_without_a_gpu_measures_nothing_and_smoke_runs(tmp_path):
    import torch

    from benchmarks import gpu

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the dry run does not apply")
    out = tmp_path / "bench" / "gpu.json"
    assert gpu.main(["--out", str(out)]) == 0 and not out.parent.exists()  # says so, writes nothing
    assert gpu.main(["--smoke", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["device"] == "smoke" and record["sections_done"] == ["train_step", "inference", "loader"]
    steps = record["train_step"]
    assert len(steps) == 3 and all(s["median_s"] > 0 and s["peak_gb"] is None for s in steps)
    assert {(s["precision"], s["kernels"], s["compiled"]) for s in steps} >= {("bf16", "native", True)}
    assert all(r["patches_per_s"] > 0 for r in record["loader"])
    assert [(r["size"], r["tile"]) for r in record["inference"]] == [(32, None), (64, 32)]


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "data" / "rain100H").is_dir(),
                    reason="../shared/data is not there")  # fmt: skip
def test_train_precision_benchmark_times_both_precisions_and_compares_gradients(tmp_path):
    from benchmarks.train_precision import main

    main(["--preset", "tiny", "--batch", "2", "--patch", "32", "--repeats", "1", "--out", str(tmp_path)])
    from compress.train import native_bf16

    (written,) = tmp_path.iterdir()  # named by whether this CPU has bf16 kernels (machines differ 10x in bf16)
    suffix = "" if native_bf16() else "_no_native_bf16"
    assert written.name == f"train_precision_tiny{suffix}.json"
    result = json.loads(written.read_text())
    assert result["native_bf16"] == native_bf16() and "threads" in result["machine"]
    assert set(result["step_seconds"]) == {"fp32", "bf16"} and all(len(v) == 1 for v in result["step_seconds"].values())
    assert result["bf16_speedup"] == pytest.approx(result["step_seconds_median"]["fp32"]
                                                   / result["step_seconds_median"]["bf16"])  # fmt: skip
    same, other = result["bf16_vs_fp32_gradient"], result["other_batch_vs_this_batch_gradient_fp32"]
    assert 0.99 < same["cosine"] <= 1.0 and 0 < same["relative_difference"] < other["relative_difference"]
    assert result["command"].endswith("--out " + str(tmp_path))


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "data" / "rain100H").is_dir(),
                    reason="../shared/data is not there")  # fmt: skip
def test_unit_sensitivity_prunes_as_each_recipe_before_any_training(tmp_path):
    from benchmarks.unit_sensitivity import main
    from compress.prune import prune
    from compress.recipe import load_recipe

    torch.manual_seed(0)
    teacher = DRSformer(DRSformerConfig.preset("tiny")).eval()
    teacher.save_pretrained(tmp_path / "teacher")
    sections = {"experts": "{target_macs: 0.75, units: [experts, steps]}",
                "internals": "{target_macs: 0.75, units: [head_channels, ffn, experts], max_ratio: 0.75}"}  # fmt: skip
    for name, section in sections.items():
        (tmp_path / f"{name}.yaml").write_text(f'teacher: {{path: "{tmp_path / "teacher"}"}}\nprune: {section}\n')
    (tmp_path / "none.yaml").write_text(f'teacher: {{path: "{tmp_path / "teacher"}"}}\n')
    with pytest.raises(SystemExit, match="none.yaml: no prune section"):
        main([str(tmp_path / "teacher"), "--recipes", str(tmp_path / "none.yaml"), "--out", str(tmp_path)])
    recipes = [str(tmp_path / f"{name}.yaml") for name in sections]
    main([str(tmp_path / "teacher"), "--recipes", *recipes, "--limit", "1", "--threads", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "unit_sensitivity.json").read_text())["rows"]
    assert [r["units"] for r in rows] == ["none (teacher)", "experts+steps (experts)",
                                          "head_channels+ffn+experts (internals)"]  # fmt: skip
    for row, recipe in zip(rows[1:], recipes):
        student, _ = prune(teacher, load_recipe(recipe).prune)  # the very student the recipe would train
        assert row["widths"] == [level.width for level in student.config.levels]
        assert row["macs_kept"] == pytest.approx(count_macs(student.config) / count_macs(teacher.config))
        assert row["macs_kept"] <= 0.75 and 5 < row["rain100H_psnr_y_db"] < 60
    assert rows[1]["max_ratio"] == 1.0 and rows[2]["max_ratio"] == 0.75

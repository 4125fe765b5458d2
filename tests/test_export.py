"""Export to ONNX and OpenVINO: dynamic sizes, outputs checked against PyTorch, evaluation of the artefact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress import evaluate
from compress.console import UserError
from compress.export import RUNTIME_FORMS, DeployedModel, export
from drsformer import DRSformer, DRSformerConfig

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
RAIN100L = ROOT.parent / "shared" / "data" / "rain100L"


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    config = DRSformerConfig.preset("tiny")
    from compress.prune import PruneSpec, prune

    spec = PruneSpec(["head_channels", "ffn", "experts", "width"], "l1", target_macs=0.5)
    pruned, _ = prune(DRSformer(config), spec)
    return pruned.eval()


@pytest.mark.skipif(not RAIN100L.is_dir(), reason="../shared/data is not there")
def test_onnx_export_of_a_pruned_student_matches_pytorch_at_any_size(tmp_path, student):
    record = export(student, "onnx", tmp_path / "s.onnx", checks={"rain100L": str(RAIN100L)}, limit=2)
    row = record["checks"]["rain100L"]
    # fp32 graph against eager on whole Rain100L images: rounding only (1e-5 to 3e-5 depending on the CPU)
    assert row["images"] == 2 and row["max_abs_difference"] < 1e-4 and abs(row["psnr_difference_db"]) < 1e-3
    assert json.loads((tmp_path / "s.check.json").read_text())["kept"]
    onnx = pytest.importorskip("onnx")
    ops = {node.op_type for node in onnx.load(tmp_path / "s.onnx").graph.node}
    assert ("CumSum" in ops) == RUNTIME_FORMS["onnxruntime"]["topk"]  # the fast top-k's prefix sums, or the official
    deployed = DeployedModel(tmp_path / "s.onnx")
    for size in ((37, 50), (64, 64), (9, 100)):  # dynamic height and width, padding inside the graph
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(deployed(x), student(x), rtol=0, atol=1e-5)
    scored = evaluate.evaluate(evaluate.load_model(tmp_path / "s.onnx"), {"rain100L": str(RAIN100L)}, limit=2,
                               show=False)  # fmt: skip
    assert scored["rain100L"]["psnr_y_db"] == pytest.approx(row["deployed_psnr_y_db"], abs=1e-6)


def test_openvino_fp32_and_bf16(tmp_path, student):
    ov = pytest.importorskip("openvino")
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        ref = student(x)
    for precision, tol in (("fp32", 1e-5), ("bf16", 0.1)):
        export(student, "openvino", tmp_path / f"s_{precision}.xml", precision)
        deployed = DeployedModel(tmp_path / f"s_{precision}.xml")
        assert deployed.precision == precision and (tmp_path / f"s_{precision}.bin").is_file()
        ops = [op.get_type_name() for op in ov.Core().read_model(tmp_path / f"s_{precision}.xml").get_ops()]
        assert "TopK" in ops and ("CumSum" in ops) == RUNTIME_FORMS[f"openvino_{precision}"]["topk"]  # its forms
        assert (deployed(x) - ref).abs().max().item() < tol


def test_int8_that_misses_the_budget_is_not_kept(tmp_path, student, monkeypatch):
    pytest.importorskip("nncf")
    import compress.export as export_module

    fake = {"s": {"psnr_difference_db": -0.3}}
    monkeypatch.setattr(export_module, "check", lambda *a, **k: fake)
    with pytest.raises(UserError, match=r"int8 costs 0.300 dB .*budget 0.1 dB.*not kept"):
        export(student, "openvino", tmp_path / "q.xml", "int8", checks={"s": "x"})
    assert not (tmp_path / "q.xml").exists() and not (tmp_path / "q.bin").exists()
    assert json.loads((tmp_path / "q.check.json").read_text())["kept"] is False
    with pytest.raises(UserError, match="use --to openvino for bf16 and int8"):
        export(student, "onnx", tmp_path / "q.onnx", "int8")


@pytest.mark.skipif(not RAIN100L.is_dir(), reason="../shared/data is not there")
def test_run_exports_as_a_recipe_stage_and_records_the_deployed_model(tmp_path):
    pytest.importorskip("openvino")
    from compress import run

    recipe = tmp_path / "deployed.yaml"
    recipe.write_text(f"""model: {{preset: "tiny"}}
data: {{patch_size: 32, val_size: 32}}
train: {{steps: 1, batch_size: 2, eval_every: 1, save_every: 1}}
eval: {{paired: {{rain100L: "{RAIN100L}"}}, limit: 2, latency_size: 32, latency_repeats: 1}}
export: {{to: openvino, precision: fp32, check_limit: 2}}
out_dir: "{tmp_path / 'runs'}"
""")
    run.main([str(recipe), "--scratch", "--results", str(tmp_path / "results")])
    record = json.loads((tmp_path / "results" / "scratch" / "deployed.json").read_text())
    deployed = record["deployed"]
    assert deployed["backend"] == "openvino" and deployed["latency_ms"] > 0
    assert deployed["checks"]["rain100L"]["deployed_psnr_y_db"] == pytest.approx(
        record["sets"]["rain100L"]["psnr_y_db"], abs=1e-3)  # fmt: skip
    assert Path(deployed["artefact"]).with_suffix(".bin").is_file()


def test_benchmarks_time_deployed_artefacts_and_tabulate_them(student):
    """study_latency --deployed times exported models like eager ones; deploy_latency's tables come from its JSON."""
    pytest.importorskip("onnxruntime")
    from benchmarks.deploy_latency import best_backends, markdown
    from benchmarks.study_latency import deployed_ms

    ms = deployed_ms({"s": student}, "onnxruntime:fp32", size=32, repeats=1, threads=1)
    assert list(ms) == ["s"] and ms["s"] > 0
    record = {"gmacs_256": {"teacher": 5.0}, "seconds": {"256": {
        "teacher": {"eager_fp32": 2.0, "openvino_fp32": 1.0, "openvino_int8": 0.5},
        "official_graph": {"eager_fp32": 3.0, "openvino_fp32": 1.5, "openvino_int8": 0.9}}},
        "psnr_y_db": {"teacher": {"eager_fp32": 30.0, "openvino_fp32": 30.0, "openvino_int8": 29.8}}}  # fmt: skip
    table = markdown(record)
    assert "| teacher (5.00 GMACs) | 2.000 | 1.000 | 0.500 |" in table and "| official_graph | 3.000 |" in table
    assert "| teacher | +0.000 | -0.200 |" in table
    # int8 costs 0.2 dB > 0.1: the best backend within budget is OpenVINO fp32; without PSNR, the fastest
    assert best_backends(record, "256") == {"teacher": ("openvino_fp32", 1.0), "official_graph": ("openvino_int8", 0.9)}

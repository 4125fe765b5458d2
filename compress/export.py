"""Export a DRSformer (teacher or pruned student) to ONNX or OpenVINO, checked against PyTorch on real images.

    python -m compress.export MODEL --to onnx|openvino [--precision fp32|bf16|int8] [--out PATH]
        [--check rain100L=../shared/data/rain100L --check rain100H=../shared/data/rain100H] [--limit 5]
        [--calibration FOLDER] [--force]

``MODEL`` is anything ``compress.evaluate`` loads (a ``save_pretrained`` folder, an official ``.pth`` with
``--preset``). The graph has a dynamic height and width (torch.onnx, opset 17; the forward's padding to a
multiple of 8 is in the graph). The artefact is written atomically, then run in its runtime on the
``--check`` sets beside the PyTorch fp32 forward: the record (``<out>.check.json``) has the largest absolute
difference and both PSNRs per set. Top-k near-ties can flip between runtimes, so the PSNR is the gate:
``int8`` (NNCF post-training quantization calibrated on training patches) is kept only if it costs at most
0.1 dB on every check set (``--force`` keeps it anyway); ``bf16`` is OpenVINO's bf16 inference precision
(the IR stays fp32; the precision travels in ``<out>.deploy.json``). ONNX exports are fp32.

``DeployedModel(path)`` runs an exported artefact like a model (``compress.evaluate`` accepts ``.onnx`` and
``.xml`` files), so a record's PSNR can be that of what is deployed. Each runtime and precision gets the graph
its runtime runs fastest (``RUNTIME_FORMS``: the eager rewrites or the official forms, same network).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.console import UserError, cli
from drsformer.io import write_json

INT8_BUDGET_DB = 0.1
EXPORT_SIZE = (61, 75)  # traced at a size that needs padding, so the graph pads every size
# Per runtime and precision, the form of each rewrite in the exported graph (``drsformer.model.EXPORT_FAST``: the
# fast form or the official one), from ``benchmarks/deploy_latency.py --forms --int8`` at 256 and 512 on the tiny
# teacher (results/bench/deploy_forms.json): OpenVINO fp32 runs the official forms (four masked softmaxes, every
# expert's own 1x1 conv) fastest at 256, OpenVINO bf16 the fast ones, ONNX Runtime the official top-k with the
# folded MEFC at 512; int8 needs the fast top-k (quantized, the official masked softmaxes cost 0.8 dB on Rain100L
# and 3.7 dB on Rain100H; the fast form's prefix sums none) and runs it fastest too.
RUNTIME_FORMS = {
    "onnxruntime": {"topk": False, "mefc": True},
    "openvino_fp32": {"topk": False, "mefc": False},
    "openvino_bf16": {"topk": True, "mefc": True},
    "openvino_int8": {"topk": True, "mefc": True},
}


def _requires(module: str, extra: str = "deploy"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{module} is not installed; pip install -e '.[{extra}]'") from None


def export_onnx(model: nn.Module, out: Path, size: tuple[int, int] = EXPORT_SIZE, forms: dict | None = None) -> Path:
    """``model`` as an ONNX graph (opset 17, dynamic height and width, traced at ``size``), written atomically;
    ``forms``: the rewrites' forms (default: ONNX Runtime's, ``RUNTIME_FORMS``)."""
    from drsformer.model import export_forms

    model = model.eval().cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        path = Path(tmp) / out.name
        with torch.no_grad(), export_forms(**(RUNTIME_FORMS["onnxruntime"] if forms is None else forms)):
            axes = {"rainy": {2: "height", 3: "width"}, "derained": {2: "height", 3: "width"}}
            torch.onnx.export(model, (torch.rand(1, 3, *size),), str(path), opset_version=17, dynamo=False,
                              input_names=["rainy"], output_names=["derained"], dynamic_axes=axes)  # fmt: skip
        path.replace(out)
    return out


def export_openvino(model: nn.Module, out: Path, precision: str, calibration: list[torch.Tensor] | None = None,
                    size: tuple[int, int] = EXPORT_SIZE, forms: dict | None = None) -> Path:  # fmt: skip
    """``model`` as an OpenVINO IR (``out`` = ``.xml``, with its ``.bin``), fp32 weights; int8 through NNCF;
    ``forms`` as in ``export_onnx`` (default: ``RUNTIME_FORMS`` for OpenVINO at ``precision``)."""
    ov = _requires("openvino")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        forms = RUNTIME_FORMS[f"openvino_{precision}"] if forms is None else forms
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx", size, forms)
        ov_model = ov.convert_model(str(onnx_path))
        if precision == "int8":
            nncf = _requires("nncf")
            if not calibration:
                raise UserError("int8 needs calibration images (--calibration FOLDER, or the recipe's training data)")
            data = nncf.Dataset([c[None].numpy() for c in calibration])
            ov_model = nncf.quantize(ov_model, data, subset_size=len(calibration))
        xml = Path(tmp) / out.name
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        xml.with_suffix(".bin").replace(out.with_suffix(".bin"))
        xml.replace(out)
    return out


class DeployedModel(nn.Module):
    """An exported artefact (``.onnx`` for ONNX Runtime, ``.xml`` for OpenVINO) behind a model's forward:
    (1, 3, H, W) float in [0, 1] -> derained, on the CPU. ``precision`` bf16 compiles OpenVINO for bf16."""

    def __init__(self, path: str | Path, precision: str | None = None, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no exported model there")
        side = self.path.with_suffix(".deploy.json")
        info = json.loads(side.read_text()) if side.is_file() else {}
        self.precision = precision or info.get("precision", "fp32")
        threads = threads or torch.get_num_threads()
        if self.path.suffix == ".onnx":
            ort = _requires("onnxruntime")
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self.backend = "onnxruntime"
        elif self.path.suffix == ".xml":
            ov = _requires("openvino")
            config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32"}  # fmt: skip
            self.compiled = ov.Core().compile_model(str(self.path), "CPU", config)
            self.backend = "openvino"
        else:
            raise UserError(f"{self.path}: expected an .onnx or an OpenVINO .xml file")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().float().contiguous().numpy()
        if self.backend == "onnxruntime":
            out = self.session.run(None, {"rainy": array})[0]
        else:
            out = self.compiled(array)[0]
        return torch.from_numpy(np.ascontiguousarray(out))


def calibration_patches(folder: str | Path | None, count: int = 32, size: int = 128) -> list[torch.Tensor]:
    """Rainy training-like patches for int8 calibration: crops of the images in ``folder`` (rainy photos or a
    paired set's inputs), or synthetic rain on the built-in photos."""
    from compress.data import BUILTIN_IMAGES, Patches, builtin_images, image_files, load_images, paired_files

    if folder is None:
        patches = Patches(builtin_images(BUILTIN_IMAGES), size, seed=11, heaviness=(0.0, 1.0))
        return [patches[i]["rainy"] for i in range(count)]
    folder = Path(folder)
    try:
        files = [rainy for rainy, _ in paired_files(folder)]
    except Exception:
        files = image_files([folder])
    patches = Patches(load_images(files), size, seed=11, role="rainy")
    return [patches[i]["rainy"] for i in range(count)]


def check(deployed: nn.Module, reference: nn.Module, sets: dict[str, str], limit: int | None) -> dict:
    """Per set: the deployed and the PyTorch PSNR/SSIM, their difference and the largest pixel difference."""
    from compress.data import PairedImages
    from compress.evaluate import derain
    from compress.metrics import psnr_y, ssim_y

    out = {}
    for name, root in sets.items():
        images = PairedImages(root)
        count = len(images) if limit is None else min(limit, len(images))
        rows = []
        for i in range(count):
            item = images[i]
            rainy, clean = item["rainy"][None], item["clean"][None]
            ours, theirs = derain(reference, rainy), deployed(rainy).clamp(0, 1)
            rows.append((psnr_y(ours, clean).item(), psnr_y(theirs, clean).item(), ssim_y(theirs, clean).item(),
                         (ours - theirs).abs().max().item()))  # fmt: skip
        torch_psnr, deployed_psnr, deployed_ssim, diff = (float(np.mean([r[k] for r in rows])) for k in range(4))
        out[name] = {"images": count, "torch_psnr_y_db": torch_psnr, "deployed_psnr_y_db": deployed_psnr,
                     "deployed_ssim_y": deployed_ssim, "psnr_difference_db": deployed_psnr - torch_psnr,
                     "max_abs_difference": max(r[3] for r in rows)}  # fmt: skip
    return out


def export(model: nn.Module, to: str, out: Path, precision: str = "fp32", checks: dict[str, str] | None = None,
           limit: int | None = 5, calibration: str | None = None, force: bool = False) -> dict:  # fmt: skip
    """Export, check and describe one artefact; returns the check record (also ``<out>.check.json``)."""
    if to == "onnx" and precision != "fp32":
        raise UserError(f"--precision {precision} with --to onnx: ONNX Runtime's CPU path here is fp32; use --to "
                        "openvino for bf16 and int8")  # fmt: skip
    started = time.perf_counter()
    if to == "onnx":
        export_onnx(model, out)
    else:
        export_openvino(model, out, precision, calibration_patches(calibration) if precision == "int8" else None)
    write_json(out.with_suffix(".deploy.json"), {"precision": precision, "backend": to})
    deployed = DeployedModel(out, precision)
    record = {"artefact": str(out), "to": to, "precision": precision, "export_seconds": time.perf_counter() - started,
              "checks": check(deployed, model.eval(), checks or {}, limit)}  # fmt: skip
    worst = min((c["psnr_difference_db"] for c in record["checks"].values()), default=0.0)
    record["kept"] = precision != "int8" or worst >= -INT8_BUDGET_DB or force
    write_json(out.with_suffix(".check.json"), record)
    if not record["kept"]:
        for path in (out, out.with_suffix(".bin"), out.with_suffix(".deploy.json")):
            path.unlink(missing_ok=True)
        raise UserError(f"{out}: int8 costs {-worst:.3f} dB on a check set (budget {INT8_BUDGET_DB} dB); not kept "
                        f"(the measurement is in {out.with_suffix('.check.json')}; --force keeps it)")  # fmt: skip
    return record


def main(argv=None) -> None:
    from compress.evaluate import _named, load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--to", choices=("onnx", "openvino"), required=True)
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32")
    parser.add_argument("--out", type=Path, help="the artefact (default: <model folder>/deploy/model.onnx|.xml)")
    parser.add_argument("--check", nargs="*", default=[], help="NAME=FOLDER paired sets to check the artefact on")
    parser.add_argument("--limit", type=int, default=5, help="images per check set (default 5)")
    parser.add_argument("--calibration", help="folder of rainy images for int8 (default: synthetic rain patches)")
    parser.add_argument("--preset", default="full", help="architecture of an official .pth")
    parser.add_argument("--threads", type=int, help="torch and runtime CPU threads")
    parser.add_argument("--force", action="store_true", help="keep an int8 model that misses the PSNR budget")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing artefact")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.preset)
    suffix = ".onnx" if args.to == "onnx" else ".xml"
    base = Path(args.model) if Path(args.model).is_dir() else Path("runs") / "export"
    out = args.out or base / "deploy" / f"model_{args.precision}{suffix}"
    if out.suffix != suffix:
        raise UserError(f"--out {out}: an {args.to} artefact ends in {suffix}")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    checks = _named(args.check, "--check")
    record = export(model, args.to, out, args.precision, checks, args.limit, args.calibration, args.force)
    print(json.dumps(record, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    cli(main)


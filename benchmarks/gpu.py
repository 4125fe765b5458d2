"""GPU benchmark of the full teacher: training step, inference, data loader, DDP scaling.

    python -m benchmarks.gpu                      # on a CUDA machine: results/bench/gpu_<device>.json
    python -m benchmarks.gpu --smoke              # every section on the CPU, tiny model and sizes, to
                                                  # results/scratch/gpu_smoke.json (checks the script runs)

Without a GPU (and without ``--smoke``) it says so, measures nothing and writes nothing. Sections, each
written to the JSON as soon as it finishes (a timeout keeps what was measured):
- ``train_step``: one optimizer step of the full teacher at 4 x 128x128 (the official per-GPU batch):
  fp32, TF32 and bf16 autocast; native depthwise backward vs the CPU's hand-written one; eager vs
  ``torch.compile`` (bf16 only: compiling every variant would not fit in the time; ``--smoke`` traces with
  aot_eager instead of inductor); median seconds and peak GPU memory.
- ``inference``: one 256x256 and one 1024x1024 image, whole and tiled (256 px tiles), fp32 and bf16.
- ``loader``: synthetic-rain patches/s of the training loader at 128 px with 0, 4 and 8 workers.
- ``ddp``: with 2+ GPUs, the training step time per GPU count (bf16, 4 patches per GPU), through
  ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from drsformer.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def train_step_case(preset: str, size: int, batch: int, precision: str, kernels: str, compiled: bool,
                    device: torch.device, warmup: int, repeats: int, backend: str = "inductor") -> dict:  # fmt: skip
    import drsformer.model as model_module
    from drsformer import DRSformer, DRSformerConfig

    model_module.DEPTHWISE_BACKWARD = kernels
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.manual_seed(0)
    model = DRSformer(DRSformerConfig.preset(preset)).to(device).train()
    step_model = torch.compile(model, backend=backend) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    rainy, clean = torch.rand(2, batch, 3, size, size, device=device).unbind(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast:
            loss = torch.nn.functional.l1_loss(step_model(rainy).float(), clean)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _reset_peak(device)
    started = time.perf_counter()
    step()  # the first step (includes compilation when compiled)
    _sync(device)
    first = time.perf_counter() - started
    times = timed(step, device, warmup, repeats)
    model_module.DEPTHWISE_BACKWARD = "auto"
    return {"precision": precision, "kernels": kernels, "compiled": compiled, "first_step_s": first,
            "median_s": statistics.median(times), "min_s": min(times), "repeats": repeats,
            "patches_per_s": batch / statistics.median(times), "peak_gb": _peak_gb(device)}  # fmt: skip


def inference_case(preset: str, size: int, tile: int | None, precision: str, device: torch.device,
                   repeats: int) -> dict:  # fmt: skip
    from drsformer import DRSformer, DRSformerConfig
    from drsformer.tiling import tiled

    torch.manual_seed(0)
    model = DRSformer(DRSformerConfig.preset(preset)).to(device).eval()
    x = torch.rand(1, 3, size, size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    @torch.no_grad()
    def forward():
        with autocast, tiled(model, tile):
            model(x)

    _reset_peak(device)
    times = timed(forward, device, 1, repeats)
    return {"size": size, "tile": tile, "precision": precision, "median_s": statistics.median(times),
            "repeats": repeats, "peak_gb": _peak_gb(device)}  # fmt: skip


def loader_case(patch: int, workers: int, batches: int, batch: int) -> dict:
    from compress.data import BUILTIN_IMAGES, Patches, builtin_images

    dataset = Patches(builtin_images(BUILTIN_IMAGES), patch, seed=0, heaviness=(0.0, 1.0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers,
                                         pin_memory=torch.cuda.is_available())  # fmt: skip
    it = iter(loader)
    next(it)  # workers started
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    return {"patch": patch, "workers": workers, "patches_per_s": batches * batch / seconds}


def ddp_case(gpus: int, preset: str, size: int, batch: int, steps: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
           "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no", "--main_process_port", "0",
           str(Path(__file__).resolve()), "--ddp-worker", str(out), "--preset", preset, "--size", str(size),
           "--batch", str(batch), "--steps", str(steps)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=300)
    return json.loads(out.read_text())


def ddp_worker(out: Path, preset: str, size: int, batch: int, steps: int) -> None:
    """One process of ``ddp_case``: bf16 steps of the full teacher, ``batch`` patches per GPU."""
    from accelerate import Accelerator

    from drsformer import DRSformer, DRSformerConfig

    accelerator = Accelerator(mixed_precision="bf16")
    torch.manual_seed(0)
    model = DRSformer(DRSformerConfig.preset(preset))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    rainy, clean = torch.rand(2, batch, 3, size, size, device=device).unbind(0)

    def step():
        loss = torch.nn.functional.l1_loss(model(rainy).float(), clean)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 0.01)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = timed(step, device, 2, steps)
    if accelerator.is_main_process:
        write_json(out, {"gpus": accelerator.num_processes, "patches_per_gpu": batch,
                         "median_s": statistics.median(times),
                         "patches_per_s": accelerator.num_processes * batch / statistics.median(times)})  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="run every section on the CPU at a tiny scale")
    parser.add_argument("--out", type=Path, help="JSON path (default results/bench/gpu_<device>.json)")
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, args.preset, args.size, args.batch, args.steps)
        return 0
    if not torch.cuda.is_available() and not args.smoke:
        print("benchmarks.gpu: no CUDA device here; nothing was measured and nothing was written "
              "(--smoke runs the sections on the CPU at a tiny scale)")  # fmt: skip
        return 0
    if args.smoke:
        device, name = torch.device("cpu"), "smoke"
        preset, size, big, repeats, warmup, batches = "tiny", 32, 64, 1, 0, 2
        out = args.out or ROOT / "results" / "scratch" / "gpu_smoke.json"
    else:
        device, name = torch.device("cuda"), torch.cuda.get_device_name(0)
        preset, size, big, repeats, warmup, batches = "full", 128, 1024, 10, 3, 50
        out = args.out or ROOT / "results" / "bench" / f"gpu_{name.replace(' ', '_').lower()}.json"
    record = {
        "command": " ".join(["python -m benchmarks.gpu", *(argv if argv is not None else sys.argv[1:])]),
        "device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "preset": preset,
        "scale": f"{preset} model; training step {4} x {size}x{size}; CUDA synchronised around every timing",
        "sections_done": [],
    }  # fmt: skip

    def done(section: str, value) -> None:
        record[section] = value
        record["sections_done"].append(section)
        write_json(out, record)
        print(f"{section}: written to {out}", flush=True)

    cases = [(p, k, False) for p in ("fp32", "tf32", "bf16") for k in ("native", "custom")] + [("bf16", "native", True)]
    if args.smoke:  # one case per code path: both kernels, autocast, compilation
        cases = [("fp32", "native", False), ("bf16", "custom", False), ("bf16", "native", True)]
    backend = "aot_eager" if args.smoke else "inductor"  # inductor's CPU codegen alone takes minutes
    done("train_step", [train_step_case(preset, size, 4, p, k, c, device, warmup, repeats, backend)
                        for p, k, c in cases])  # fmt: skip
    inference = [(s, t, p) for s in (256, big) for t in (None, 256) for p in ("fp32", "bf16")]
    if args.smoke:
        inference = [(size, None, "fp32"), (big, 32, "bf16")]
    done("inference", [inference_case(preset, s, t, p, device, repeats) for s, t, p in inference])
    workers = (0, 4, 8) if not args.smoke else (0,)
    done("loader", [loader_case(128 if not args.smoke else size, w, batches, 16) for w in workers])
    gpus = torch.cuda.device_count() if not args.smoke else 0
    if gpus >= 2:
        counts = sorted({1, 2, gpus} | ({4} if gpus >= 4 else set()))
        done("ddp", [ddp_case(n, preset, size, 4, repeats, out.with_suffix(f".ddp{n}.tmp")) for n in counts])
    for tmp in out.parent.glob(out.stem + ".ddp*.tmp"):
        os.remove(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training in bf16 autocast against fp32 on this CPU: the step time and how far the gradient moves.

    python -m benchmarks.train_precision --model results/teacher_study/best      # the study teacher
    python -m benchmarks.train_precision --preset tiny --repeats 2                # seconds, a smoke run

One model (a saved one, or a preset with random weights), one batch of ``--batch`` ``--patch`` px crops of
Rain100H (rainy input, clean target), L1 loss, backward, grad-norm clip 0.01 and AdamW, as ``fit()`` trains.
Step time: ``--repeats`` alternating fp32 / bf16 steps after one warm-up each, median per precision (the
weights are restored before every step, so both time the same step). Gradient: the cosine similarity and the
relative norm of the difference between the bf16 and the fp32 gradient of the same weights on the same batch,
over all parameters, and for contrast the same between two different batches in fp32 (the minibatch noise
that training already lives with). Writes ``results/bench/train_precision_<name>.json`` on a CPU with bf16
kernels, ``..._<name>_no_native_bf16.json`` on one without (AVX2 only: bf16 falls back to reference kernels;
``train.mixed_precision: auto`` trains in fp32 there).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from compress.results import cpu_model
from compress.train import native_bf16
from drsformer import PRESETS, DRSformer, DRSformerConfig
from drsformer.io import write_json

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def rain100h_batches(count: int, patch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two batches of ``count`` (rainy, clean) centre crops of Rain100H: images 1 to ``count`` and the next ones."""
    from compress.data import PairedImages, centre_crop

    pairs = PairedImages(SHARED / "rain100H")
    items = [pairs[i] for i in range(2 * count)]
    return [tuple(torch.stack([centre_crop(item[key], patch) for item in items[start : start + count]])
                  for key in ("rainy", "clean")) for start in (0, count)]  # fmt: skip


def gradient(model: DRSformer, rainy: torch.Tensor, clean: torch.Tensor, bf16: bool) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(rainy)
    F.l1_loss(out.float(), clean).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    relative = ((a - b).norm() / b.norm()).item()
    return {"cosine": F.cosine_similarity(a, b, dim=0).item(), "relative_difference": relative}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a save_pretrained folder (default: --preset, random weights)")
    parser.add_argument("--preset", default="study", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DRSformer.from_pretrained(args.model) if args.model else DRSformer(DRSformerConfig.preset(args.preset))
    name = "_".join(args.model.resolve().parts[-2:]) if args.model else args.preset  # e.g. teacher_study_best
    (rainy, clean), other = rain100h_batches(args.batch, args.patch)

    g32 = gradient(model, rainy, clean, bf16=False)
    g16 = gradient(model, rainy, clean, bf16=True)
    g_other = gradient(model, *other, bf16=False)

    start_weights = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)

    def step(bf16: bool) -> float:
        model.load_state_dict(start_weights)
        began = time.perf_counter()
        gradient(model, rainy, clean, bf16)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        optimizer.step()
        return time.perf_counter() - began

    times = {"fp32": [], "bf16": []}
    step(False), step(True)  # warm-up
    for _ in range(args.repeats):
        times["fp32"].append(step(False))
        times["bf16"].append(step(True))
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": "python -m benchmarks.train_precision " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": str(args.model) if args.model else f"preset {args.preset}, random weights",
        "batch": f"{args.batch} x {args.patch}x{args.patch} Rain100H centre crops",
        "machine": f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "native_bf16": native_bf16(),  # oneDNN has bf16 kernels here (what train.mixed_precision: auto follows)
        "step_seconds_median": median,
        "step_seconds": times,
        "bf16_speedup": median["fp32"] / median["bf16"],
        "bf16_vs_fp32_gradient": compare(g16, g32),
        "other_batch_vs_this_batch_gradient_fp32": compare(g_other, g32),
    }
    out = args.out / f"train_precision_{name}{'' if native_bf16() else '_no_native_bf16'}.json"
    write_json(out, result)
    print({k: result[k] for k in ("step_seconds_median", "bf16_speedup", "bf16_vs_fp32_gradient",
                                  "other_batch_vs_this_batch_gradient_fp32")}, "->", out)  # fmt: skip


if __name__ == "__main__":
    main()

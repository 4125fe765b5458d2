"""Speed of ``drsformer.DRSformer`` against the literal official formulation, side by side in one run.

    python -m benchmarks.model_speed                      # full paper model, 256x256 inference, 128x128 step
    python -m benchmarks.model_speed --preset tiny --infer-size 64 --train-size 64   # seconds, for a smoke run

Both models hold the same random weights. Inference: eval mode, no_grad, one warm-up forward each (the
first forward of a process can flip a top-k choice on near-ties, see ../shared/fixtures/README.md),
then ``--repeats`` alternating timed forwards; the max abs output difference is taken after warm-up.
Training step: batch 1, L1 loss against a random target, backward, grad-norm clip 0.01, AdamW,
as in the official training; both models start from the same weights and see the same batches. The
first (untimed) step is where outputs and gradients are compared: after it, AdamW turns float-rounding
differences of the gradients into lr-sized weight differences, so later steps are not comparable.
Writes ``results/bench/model_speed_<preset>.json`` atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from drsformer import PRESETS, DRSformer, DRSformerConfig
from drsformer.io import write_json
from tests.literal_drsformer import LiteralDRSformer


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_inference(literal, fast, size: int, repeats: int, seed: int) -> dict:
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    times = {"literal": [], "fast": []}
    with torch.no_grad():
        out_literal, out_fast = literal(x), fast(x)  # warm-up
        for _ in range(repeats):
            times["literal"].append(_timed(lambda: literal(x)))
            times["fast"].append(_timed(lambda: fast(x)))
        out_literal, out_fast = literal(x), fast(x)
    diff = (out_literal - out_fast).abs().max().item()
    return _summary(times) | {"input": [1, 3, size, size], "max_abs_output_diff": diff}


def bench_train_step(literal, fast, size: int, repeats: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.rand(1, 3, size, size, generator=gen), torch.rand(1, 3, size, size, generator=gen))
               for _ in range(repeats + 1)]
    optims = {name: torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=1e-4, betas=(0.9, 0.999))
              for name, m in (("literal", literal), ("fast", fast))}
    models = {"literal": literal, "fast": fast}
    outputs = {}

    def step(name, rainy, clean):
        model, optim = models[name], optims[name]
        optim.zero_grad(set_to_none=True)
        out = model(rainy)
        F.l1_loss(out, clean).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        optim.step()
        outputs[name] = out.detach()

    times = {"literal": [], "fast": []}
    first = {}
    for i, (rainy, clean) in enumerate(batches):
        for name in ("literal", "fast"):
            elapsed = _timed(lambda name=name, rainy=rainy, clean=clean: step(name, rainy, clean))
            if i:  # the first step is a warm-up, and the one compared: both models still hold the same weights
                times[name].append(elapsed)
            else:
                grads = [p.grad.clone() for p in models[name].parameters()]
                first[name] = (outputs[name], grads)
    # Absolute differences against the largest gradient: the attn1..4 and temperature gradients are sums
    # with heavy cancellation, so a per-tensor relative difference only measures float32 rounding there.
    grad_diff = max((a - b).abs().max().item() for a, b in zip(first["fast"][1], first["literal"][1]))
    grad_scale = max(b.abs().max().item() for b in first["literal"][1])
    return _summary(times) | {
        "input": [1, 3, size, size],
        "max_abs_output_diff_first_step": (first["literal"][0] - first["fast"][0]).abs().max().item(),
        "max_abs_grad_diff_first_step": grad_diff,
        "max_abs_grad_first_step": grad_scale,
        "steps_timed": repeats,
    }


def _summary(times: dict) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "literal_s": med["literal"],
        "fast_s": med["fast"],
        "speedup": med["literal"] / med["fast"],
        "literal_all_s": times["literal"],
        "fast_all_s": times["fast"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--infer-size", type=int, default=256)
    parser.add_argument("--train-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: results/bench/model_speed_<preset>.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    kwargs = dict(PRESETS[args.preset])
    literal = LiteralDRSformer(**kwargs)
    fast = DRSformer(DRSformerConfig.from_official_kwargs(**kwargs))
    fast.load_state_dict(literal.state_dict(), strict=True)

    record = {
        "benchmark": "drsformer fast forward vs literal official formulation (fp32, CPU)",
        "command": "python -m benchmarks.model_speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "preset": args.preset,
        "params": sum(p.numel() for p in fast.parameters()),
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "inference": bench_inference(literal.eval(), fast.eval(), args.infer_size, args.repeats, args.seed),
        "train_step": bench_train_step(literal.train(), fast.train(), args.train_size, args.repeats, args.seed),
    }
    out = args.out or Path("results/bench") / f"model_speed_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    print(json.dumps({k: record[k] for k in ("preset", "inference", "train_step")}, indent=1))
    return record


if __name__ == "__main__":
    main()

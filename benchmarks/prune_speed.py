"""Pruning cost on a teacher and the real CPU speed-up of its students.

    python -m benchmarks.prune_speed                         # full paper model (random weights), 50% MACs
    python -m benchmarks.prune_speed --preset tiny --size 64 # seconds, a smoke run
    python -m benchmarks.prune_speed --units head_channels,ffn,experts,width --max-ratio 0.5

1. Prunes the teacher to ``--target`` of its MACs with Taylor importance (``--calibration`` batches of
   1x3x64x64 synthetic rain; the forward/backward is included in the time), units ``--units`` (default
   head_channels, ffn and experts; at most ``--max-ratio`` of any family), and records wall time and the
   process's peak resident memory (includes building the teacher).
2. Also prunes to 0.7 and 0.3 of the MACs (L1, no calibration) for the latency curve.
3. Times one 1x3x``size``x``size`` forward (fp32, eval, median of ``--repeats`` after a warm-up) of the
   teacher and each student, side by side in this process.
Writes ``results/bench/prune_speed_<preset>.json`` (``..._<units>.json`` for other units) atomically.
Random weights: pruning cost and latency do not depend on training, and the ranking here is only a valid
one, not a meaningful one.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from compress.measure import count_macs, count_params, latency_ms
from compress.prune import PruneSpec, prune
from compress.rain import add_rain
from compress.results import cpu_model
from drsformer import PRESETS, DRSformer, DRSformerConfig
from drsformer.io import write_json

UNITS = "head_channels,ffn,experts"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--calibration", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--units", default=UNITS, help="comma-separated unit kinds (compress.prune.UNITS)")
    parser.add_argument("--max-ratio", type=float, default=1.0, help="largest share removed from one family")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    units = args.units.split(",")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = DRSformer(DRSformerConfig.preset(args.preset))
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.calibration):
        clean = torch.rand(1, 3, 64, 64, generator=gen)
        batches.append((add_rain(clean, 0.5, gen), clean))

    started = time.perf_counter()
    student, _ = prune(teacher, PruneSpec(units, "taylor", target_macs=args.target, max_ratio=args.max_ratio), batches)
    prune_s = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    students = {f"taylor_{args.target}": student}
    for target in (0.7, 0.3):
        students[f"l1_{target}"] = prune(teacher, PruneSpec(units, target_macs=target, max_ratio=args.max_ratio))[0]

    teacher_ms = latency_ms(teacher, args.size, args.repeats)
    rows = {}
    for name, model in students.items():
        ms = latency_ms(model, args.size, args.repeats)
        rows[name] = {
            "params": count_params(model),
            "gmacs": count_macs(model.config, args.size, args.size) / 1e9,
            "macs_kept": count_macs(model.config, args.size, args.size)
            / count_macs(teacher.config, args.size, args.size),
            "latency_ms": ms,
            "speedup": teacher_ms / ms,
            "config": model.config.to_dict(),
        }
    record = {
        "command": " ".join(["python -m benchmarks.prune_speed", *sys.argv[1:]]),
        "preset": args.preset,
        "machine": f"{cpu_model()}, {args.threads} torch threads, fp32, eval, batch 1",
        "torch": torch.__version__,
        "units": units,
        "max_ratio": args.max_ratio,
        "prune_taylor_seconds": prune_s,
        "peak_rss_gb_after_prune": peak_gb,
        "calibration": f"{args.calibration} x 1x3x64x64 synthetic rain",
        "teacher": {
            "params": count_params(teacher),
            "gmacs": count_macs(teacher.config, args.size, args.size) / 1e9,
            "latency_ms": teacher_ms,
        },  # fmt: skip
        "latency_size": args.size,
        "students": rows,
    }
    suffix = "" if args.units == UNITS else "_" + "+".join(units)
    out = args.out / f"prune_speed_{args.preset}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    print(json.dumps({k: v for k, v in record.items() if k != "students"}, indent=1))
    for name, row in rows.items():
        print(f"{name}: {row['macs_kept']:.2f} of the MACs, {row['latency_ms']:.0f} ms, {row['speedup']:.2f}x")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

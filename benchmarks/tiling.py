"""Tiled against whole-image inference: the same output (the 0.05 dB requirement), and how much memory.

    python -m benchmarks.tiling runs/teacher_tiny/final --set ../shared/data/rain100H --tile 128 --limit 20 \
        --memory-preset full --memory-size 512

Accuracy: per image of the paired set, PSNR (Y) whole vs tiled (``drsformer.tiling``), the largest
absolute pixel difference, and the same figures for naive tiling (the network run on overlapping
``--tile`` x ``--tile`` windows of the image, blended linearly over ``--overlap`` pixels), which is
what tiling costs without whole-image attention and routing statistics.
Memory: for a ``--memory-preset`` model with random weights on a ``--memory-size`` square image, the
peak resident memory of a fresh process over its baseline after loading the model, whole vs tiled.
Float rounding: for a ``--fp64-preset`` model with random weights on the first image of the set, the
whole-image fp32 forward and the tiled fp32 forward against the whole-image fp64 forward (which of the
two fp32 results is closer to the exact maths; they differ where a top-k choice sits on a near-tie).
Writes ``results/bench/tiling_<set>.json`` atomically.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from compress.data import PairedImages
from compress.evaluate import derain, load_model
from compress.metrics import psnr_y
from drsformer import DRSformer, DRSformerConfig
from drsformer.io import write_json
from drsformer.tiling import tiled_forward


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    w = torch.ones(n)
    if overlap:
        ramp = torch.linspace(1, overlap, overlap) / (overlap + 1)
        w[:overlap] = 1 if at_start else ramp
        w[n - overlap :] = 1 if at_end else ramp.flip(0)
    return w


@torch.no_grad()
def naive_tiles(model, image: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """The baseline: the model on overlapping windows, blended with linear ramps over the overlap."""
    h, w = image.shape[-2:]
    out, weight = torch.zeros_like(image), torch.zeros_like(image[:, :1])

    def starts(size: int) -> list[int]:
        return [0] if size <= tile else [*range(0, size - tile, tile - overlap), size - tile]

    tops, lefts = starts(h), starts(w)
    for top in tops:
        for left in lefts:
            window = image[..., top : top + tile, left : left + tile]
            blend = _ramp(window.shape[-2], overlap, top == 0, top == tops[-1])[:, None]
            blend = blend * _ramp(window.shape[-1], overlap, left == 0, left == lefts[-1])
            out[..., top : top + tile, left : left + tile] += model(window) * blend
            weight[..., top : top + tile, left : left + tile] += blend
    return (out / weight).clamp(0, 1)


def accuracy(model, data: PairedImages, count: int, tile: int, overlap: int) -> dict:
    rows, max_diff, max_naive = [], 0.0, 0.0
    for i in range(count):
        item = data[i]
        rainy, clean = item["rainy"][None], item["clean"][None]
        whole, exact, naive = derain(model, rainy), derain(model, rainy, tile), naive_tiles(model, rainy, tile, overlap)
        rows.append([psnr_y(t, clean).item() for t in (whole, exact, naive)])
        max_diff = max(max_diff, (whole - exact).abs().max().item())
        max_naive = max(max_naive, (whole - naive).abs().max().item())
    mean = [sum(col) / count for col in zip(*rows)]
    return {
        "psnr_y_db_whole": mean[0], "psnr_y_db_tiled": mean[1], "difference_db": mean[1] - mean[0],
        "largest_image_difference_db": max(abs(r[1] - r[0]) for r in rows), "max_abs_pixel_difference": max_diff,
        "naive": {"overlap": overlap, "psnr_y_db": mean[2], "difference_db": mean[2] - mean[0],
                  "largest_image_difference_db": max(abs(r[2] - r[0]) for r in rows),
                  "max_abs_pixel_difference": max_naive},
        "per_image_whole_tiled_naive": rows,
    }  # fmt: skip


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def measure_memory(preset: str, size: int, tile: int | None) -> dict:
    """In this (fresh) process: peak RSS growth of one no-grad forward, and its time."""
    torch.manual_seed(0)
    model = DRSformer(DRSformerConfig.preset(preset)).eval()
    x = torch.rand(1, 3, size, size)
    base = _rss_gb()
    start = time.perf_counter()
    with torch.no_grad():
        model(x) if tile is None else tiled_forward(model, x, tile)
    return {"tile": tile, "peak_rss_growth_gb": round(_rss_gb() - base, 3), "seconds": time.perf_counter() - start}


def memory_in_child(preset: str, size: int, tile: int | None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.tiling", "--child", preset, str(size), str(tile or 0)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


@torch.no_grad()
def against_fp64(preset: str, image: torch.Tensor, tile: int) -> dict:
    torch.manual_seed(0)
    model = DRSformer(DRSformerConfig.preset(preset)).eval()
    whole, tiled = model(image), tiled_forward(model, image, tile)
    reference = model.double()(image.double())

    def gap(t: torch.Tensor) -> dict:
        d = (t.double() - reference).abs()
        return {"max_abs": d.max().item(), "mean_abs": d.mean().item()}

    return {"preset": preset, "size": list(image.shape[-2:]), "whole_fp32": gap(whole), "tiled_fp32": gap(tiled)}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        preset, size, tile = argv[1], int(argv[2]), int(argv[3]) or None
        print(json.dumps(measure_memory(preset, size, tile)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--set", dest="paired", type=Path, default=Path("../shared/data/rain100H"))
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=32, help="overlap of the naive tiling baseline")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--memory-preset", help="also measure peak memory for this architecture preset")
    parser.add_argument("--memory-size", type=int, default=512)
    parser.add_argument("--fp64-preset", help="also compare both fp32 forwards with fp64 for this preset")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    model = load_model(args.model).eval()
    data = PairedImages(args.paired)
    count = len(data) if args.limit is None else min(args.limit, len(data))
    record = {
        "command": " ".join(["python -m benchmarks.tiling", *argv]),
        "model": args.model, "set": str(args.paired), "images": count, "tile": args.tile,
        **accuracy(model, data, count, args.tile, args.overlap),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
    }  # fmt: skip
    if args.memory_preset:
        runs = [memory_in_child(args.memory_preset, args.memory_size, t) for t in (None, args.tile)]
        record["memory"] = {"preset": args.memory_preset, "size": args.memory_size, "whole": runs[0], "tiled": runs[1]}
    if args.fp64_preset:
        record["against_fp64"] = against_fp64(args.fp64_preset, data[0]["rainy"][None], args.tile)
    out = args.out / f"tiling_{args.paired.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    print(f"{count} images: whole {record['psnr_y_db_whole']:.3f} dB, tiled {record['psnr_y_db_tiled']:.3f} dB "
          f"({record['difference_db']:+.4f}), naive {record['naive']['difference_db']:+.4f}; wrote {out}")  # fmt: skip


if __name__ == "__main__":
    main()

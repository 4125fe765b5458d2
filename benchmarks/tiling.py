"""Tiled against whole-image inference of a trained model on a paired set (the 0.05 dB requirement).

    python -m benchmarks.tiling runs/teacher_tiny/final --set ../shared/data/rain100H --tile 256 --overlap 32

Writes ``results/bench/tiling_<set>.json``: per-image and mean PSNR (Y) whole vs tiled, and the largest
absolute pixel difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from compress.data import PairedImages
from compress.evaluate import derain, load_model
from compress.metrics import psnr_y
from drsformer.model import atomic_write


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--set", dest="paired", type=Path, default=Path("../shared/data/rain100H"))
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    model = load_model(args.model).eval()
    data = PairedImages(args.paired)
    count = len(data) if args.limit is None else min(args.limit, len(data))
    whole, tiled, max_diff = [], [], 0.0
    for i in range(count):
        item = data[i]
        rainy, clean = item["rainy"][None], item["clean"][None]
        a, b = derain(model, rainy), derain(model, rainy, args.tile, args.overlap)
        whole.append(psnr_y(a, clean).item())
        tiled.append(psnr_y(b, clean).item())
        max_diff = max(max_diff, (a - b).abs().max().item())
    mean_whole, mean_tiled = sum(whole) / count, sum(tiled) / count
    record = {
        "command": " ".join(["python -m benchmarks.tiling", *sys.argv[1:]]),
        "model": args.model, "set": str(args.paired), "images": count, "tile": args.tile, "overlap": args.overlap,
        "psnr_y_db_whole": mean_whole, "psnr_y_db_tiled": mean_tiled, "difference_db": mean_tiled - mean_whole,
        "max_abs_pixel_difference": max_diff, "per_image": list(zip(whole, tiled)), "torch": torch.__version__,
    }  # fmt: skip
    out = args.out / f"tiling_{args.paired.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: Path(p).write_text(json.dumps(record, indent=1) + "\n"))
    print(f"{count} images: whole {mean_whole:.3f} dB, tiled {mean_tiled:.3f} dB ({mean_tiled - mean_whole:+.3f}); "
          f"wrote {out}")  # fmt: skip


if __name__ == "__main__":
    main()

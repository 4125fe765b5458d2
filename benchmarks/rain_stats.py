"""Input PSNR of synthetic rain on the clean backgrounds, against the Rain100L/H benchmarks.

    python -m benchmarks.rain_stats [--data ../shared/data] [--seed 0]

For heaviness 0 (light), 0.5 and 1 (heavy), rains every CBSD68 background of ``../shared/data``
(none of them a Rain100 test background) and records the mean and spread of the Y-channel PSNR of
rainy against clean, next to the same figure for the real Rain100L and Rain100H inputs.
Writes ``results/bench/rain_stats.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from compress.data import paired_files, read_image, read_pair
from compress.metrics import psnr_y
from compress.rain import add_rain
from drsformer.io import write_json


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/bench/rain_stats.json"))
    args = parser.parse_args(argv)

    backgrounds = [read_image(p)[None] for p in sorted((args.data / "clean_backgrounds" / "cbsd68").glob("*.png"))]
    if not backgrounds:
        raise SystemExit(f"{args.data / 'clean_backgrounds' / 'cbsd68'}: no PNG backgrounds found")
    gen = torch.Generator().manual_seed(args.seed)
    record = {"command": "python -m benchmarks.rain_stats", "seed": args.seed,
              "backgrounds": f"cbsd68 ({len(backgrounds)} images, 481x321)", "synthetic": {}, "benchmarks": {}}
    for heaviness in (0.0, 0.5, 1.0):
        start = time.perf_counter()
        scores = [psnr_y(add_rain(img, heaviness, gen), img).item() for img in backgrounds]
        record["synthetic"][str(heaviness)] = {
            "psnr_y_db_mean": float(np.mean(scores)), "psnr_y_db_std": float(np.std(scores)),
            "seconds_per_image": (time.perf_counter() - start) / len(backgrounds)}
    for name in ("rain100L", "rain100H"):
        scores = [psnr_y(*(t[None] for t in read_pair(r, c))).item() for r, c in paired_files(args.data / name)]
        record["benchmarks"][name] = {"psnr_y_db_mean": float(np.mean(scores)), "psnr_y_db_std": float(np.std(scores))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, record)
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()

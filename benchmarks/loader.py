"""The training loader's own speed: (rainy, clean) patches/s at 128 px, without any model.

    python -m benchmarks.loader [--out results/bench/loader.json] [--batches 30]

Three sources, each with 0, 2 and 4 DataLoader workers, batches of 16: a paired set held in RAM
(``cache: ram``), the same PNGs decoded from disk for every patch (``cache: disk``), and synthetic rain on
clean backgrounds in RAM (the rain is drawn per patch in the loader). The paired set is Rain100H's 100
pairs (481x321) from ``../shared/data``, read as a training source only to time it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from compress.recipe import DataConfig
from compress.results import cpu_model
from compress.sources import training_pairs
from drsformer.io import write_json

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def patches_per_s(dataset, workers: int, batches: int, batch: int = 16) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers)
    it = iter(loader)
    next(it)  # workers started, caches warm
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/loader.json"))
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--patch", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sources = {
        "paired_in_ram": {"kind": "paired", "root": str(SHARED / "rain100H"), "cache": "ram"},
        "paired_png_from_disk": {"kind": "paired", "root": str(SHARED / "rain100H"), "cache": "disk"},
        "synthetic_in_ram": {"kind": "synthetic", "backgrounds": [str(SHARED / "clean_backgrounds" / "kodak24")]},
    }
    results = {}
    for name, source in sources.items():
        dataset = training_pairs(DataConfig(sources=[source], patch_size=args.patch), seed=0)
        results[name] = {str(w): patches_per_s(dataset, w, args.batches) for w in (0, 2, 4)}
        print(name, {w: f"{v:.0f}" for w, v in results[name].items()}, flush=True)
    write_json(args.out, {
        "command": " ".join(["python -m benchmarks.loader", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs",
        "scale": f"patches/s of {args.patch}px, batches of 16, {args.batches} batches after the first; "
                 "1 torch thread per process; keys: workers",
        "patches_per_s": results,
    })  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

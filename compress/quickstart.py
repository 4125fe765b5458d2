"""The embedded default job: derain a built-in image with a tiny DRSformer and report its size.

    python -m compress.quickstart [--preset tiny] [--out runs/quickstart]

Until the teacher -> prune -> distill pipeline lands, this is the smallest end-to-end job that runs on
a fresh machine with no download: it builds ``DRSformer(preset)`` with random weights (so it does not
derain yet), adds light synthetic rain (``compress.rain``) to scikit-image's bundled ``astronaut``
photo, runs the model, and prints params and MACs (the same counter as the paper's numbers) next to the full model's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from compress.measure import count_macs, count_params
from compress.rain import add_rain
from drsformer import PRESETS, DRSformer, DRSformerConfig


def builtin_image(size: int = 256) -> torch.Tensor:
    """scikit-image's bundled astronaut photo (public domain, NASA), centre-cropped, (1, 3, size, size)."""
    from skimage import data, transform

    img = transform.resize(data.astronaut(), (size, size), anti_aliasing=True)
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    args = parser.parse_args(argv)
    console = Console()

    torch.manual_seed(0)
    cfg = DRSformerConfig.preset(args.preset)
    model = DRSformer(cfg).eval()
    rainy = add_rain(builtin_image(args.size), heaviness=0.0, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.no_grad():
        derained = model(rainy).clamp(0, 1)
    seconds = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    for name, img in (("rainy", rainy), ("derained", derained)):
        array = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(args.out / f"{name}.png")
    model.save_pretrained(args.out / "model")

    full = DRSformerConfig.preset("full")
    table = Table(title=f"DRSformer '{args.preset}' (random init) vs the paper model")
    for column in ("model", "params", f"GMACs @ {args.size}x{args.size}", "CPU forward (s)"):
        table.add_column(column)
    table.add_row(
        args.preset, f"{count_params(model):,}", f"{count_macs(cfg, args.size, args.size) / 1e9:.3f}", f"{seconds:.2f}"
    )
    with torch.device("meta"):
        full_params = count_params(DRSformer(full))
    table.add_row("full (paper)", f"{full_params:,}", f"{count_macs(full, args.size, args.size) / 1e9:.1f}", "-")
    console.print(table)
    console.print(f"wrote {args.out}/rainy.png, {args.out}/derained.png and {args.out}/model/ (save_pretrained)")


if __name__ == "__main__":
    main()

"""Evaluate a DRSformer (teacher or student) and derain folders.

    python -m compress.evaluate score MODEL --paired rain100L=../shared/data/rain100L \
        --real sirr147=../shared/data/real_rain/sirr147 --out results/eval.json [--tile 256]
    python -m compress.evaluate derain MODEL my_photos/ derained/ [--side-by-side]

``MODEL`` is a ``save_pretrained`` folder, an official ``.pth`` (with ``--preset``, default ``full``),
``identity`` (the rainy input itself: the input-vs-target figures of a set), or ``random:PRESET`` (that
architecture with seeded random weights, for memory and speed checks). Paired sets are scored
with PSNR/SSIM on Y (``compress.metrics``), real rainy photos with NIQE/BRISQUE. ``--tile`` runs every
transformer block and MEFC step on tiles for images too large for memory, with the same output as the
whole image (``drsformer.tiling``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.console import cli, progress_bar
from compress.data import (
    DataError,
    PairedImages,
    check_writable_folder,
    image_files,
    read_image,
    real_photos,
    to_uint8,
)
from compress.measure import model_device
from compress.metrics import NoReference, psnr_y, ssim_y
from drsformer import PRESETS, DRSformer, DRSformerConfig
from drsformer.io import atomic_write, write_json
from drsformer.tiling import tiled


class Identity(nn.Module):
    """The 'model' that returns its input: scores the rain itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def load_model(spec: str | Path, preset: str = "full") -> nn.Module:
    """A model from a ``save_pretrained`` folder, an official ``.pth`` (architecture ``preset``), an exported
    ``.onnx`` / OpenVINO ``.xml`` (``compress.export``), ``identity`` or ``random:PRESET``."""
    if str(spec) == "identity":
        return Identity()
    if str(spec).startswith("random:"):  # memory and speed checks of an architecture without weights
        torch.manual_seed(0)
        return DRSformer(DRSformerConfig.preset(str(spec).removeprefix("random:")))
    path = Path(spec)
    if path.suffix in (".onnx", ".xml"):  # an exported artefact, run in its runtime (compress.export)
        from compress.export import DeployedModel

        return DeployedModel(path)
    if path.is_dir():
        return DRSformer.from_pretrained(path)
    if path.is_file():
        return DRSformer.from_official(path, DRSformerConfig.preset(preset))
    raise FileNotFoundError(f"{spec}: neither a save_pretrained folder, an official .pth file, 'identity' nor "
                            "'random:PRESET'")


@torch.no_grad()
def derain(model: nn.Module, rainy: torch.Tensor, tile: int | None = None) -> torch.Tensor:
    """Derained (B, 3, H, W) in [0, 1]; with ``tile``, every block runs on ``tile`` x ``tile`` tiles
    (``drsformer.tiling``: the same output as the whole image, with less memory)."""
    with tiled(model, tile):
        return model(rainy).clamp(0, 1)


def _shard(count: int, accelerator) -> range:
    """The indices this process scores: every N-th image under N processes, all of them otherwise."""
    if accelerator is None:
        return range(count)
    return range(accelerator.process_index, count, accelerator.num_processes)


def _gathered(rows: list[dict], seconds: float, accelerator) -> tuple[list[dict], float]:
    """Every process's per-image rows in image order, and the slowest process's time."""
    if accelerator is None or accelerator.num_processes == 1:
        return rows, seconds
    from accelerate.utils import gather_object

    rows = sorted(gather_object(rows), key=lambda r: r["index"])
    return rows, max(gather_object([seconds]))


def _device(model: nn.Module, accelerator) -> torch.device:
    return accelerator.device if accelerator is not None else model_device(model)


def _summary(rows: list[dict], metrics: tuple[str, ...], seconds: float) -> dict:
    for row in rows:
        row.pop("index", None)
    return {
        "images": len(rows),
        **{m: float(np.mean([r[m] for r in rows])) for m in metrics},
        "images_per_s": len(rows) / max(seconds, 1e-9),
        "per_image": rows,
    }


def score_paired(
    model: nn.Module,
    dataset: PairedImages,
    tile: int | None = None,
    progress=None,
    label: str = "",
    limit: int | None = None,
    accelerator=None,
) -> dict:
    """Mean PSNR/SSIM (Y) over a paired set, images/s and the per-image scores (``per_image``).

    With an ``accelerator``, each of its processes scores every N-th image on its device and the rows are
    gathered, so N processes take 1/N of the time and every process returns the whole result.
    """
    count = len(dataset) if limit is None else min(limit, len(dataset))
    mine = _shard(count, accelerator)
    device = _device(model, accelerator)
    task = progress.add_task(label, total=len(mine)) if progress else None
    rows, seconds = [], 0.0
    for i in mine:
        item = dataset[i]
        rainy, clean = item["rainy"][None].to(device), item["clean"][None].to(device)
        start = time.perf_counter()
        derained = derain(model, rainy, tile)
        seconds += time.perf_counter() - start
        try:
            ssim = ssim_y(derained, clean).item()
        except ValueError as err:  # too small for the SSIM window: name the image
            raise DataError(f"{label or 'paired set'}: image {item['name']}: {err}; remove it from the set") from None
        rows.append({"index": i, "name": item["name"], "psnr_y_db": psnr_y(derained, clean).item(), "ssim_y": ssim})
        if progress:
            progress.advance(task)
    rows, seconds = _gathered(rows, seconds, accelerator)
    return _summary(rows, ("psnr_y_db", "ssim_y"), seconds)


def score_unpaired(
    model: nn.Module,
    folder: str | Path,
    tile: int | None = None,
    progress=None,
    label: str = "",
    limit: int | None = None,
    scorer: NoReference | None = None,
    accelerator=None,
    split: str = "all",
    split_key: str = "split",
) -> dict:
    """Mean NIQE/BRISQUE of the derained photos of ``folder`` (no ground truth), images/s, per image; sharded
    over an ``accelerator``'s processes as ``score_paired``. ``split``: the folder's photos, or its held-out
    ``"test"`` half (``compress.data.split_files``), chosen by the caller's ``split_key`` (named in its errors)."""
    files = real_photos([folder], split, split_key)[:limit]
    scorer = scorer or NoReference()
    mine = _shard(len(files), accelerator)
    device = _device(model, accelerator)
    task = progress.add_task(label, total=len(mine)) if progress else None
    rows, seconds = [], 0.0
    for i in mine:
        rainy = read_image(files[i])[None].to(device)
        start = time.perf_counter()
        derained = derain(model, rainy, tile)
        seconds += time.perf_counter() - start
        scores = scorer(derained.cpu())
        rows.append({"index": i, "name": files[i].name, **{name: v.item() for name, v in scores.items()}})
        if progress:
            progress.advance(task)
    rows, seconds = _gathered(rows, seconds, accelerator)
    return _summary(rows, tuple(scorer.metrics), seconds)


def evaluate(
    model: nn.Module,
    paired: dict[str, str | Path] | None = None,
    real: dict[str, str | Path] | None = None,
    tile: int | None = None,
    limit: int | None = None,
    show: bool = True,
    accelerator=None,
    real_split: str = "all",
    split_key: str = "eval.real_split",
) -> dict[str, dict]:
    """Score ``model`` on named paired sets and real-rain folders; ``{set: {metric: value, per_image: [...]}}``.

    With an ``accelerator`` the model runs on its device and the images are shared out over its processes
    (every process returns the same result). ``real_split``: every real photo, or each folder's held-out
    ``"test"`` half; ``split_key`` is what chose it, for the error when a folder has no photo in it."""
    from rich.console import Console

    model = model.eval()
    if accelerator is not None:
        model = model.to(accelerator.device)
    show = show and (accelerator is None or accelerator.is_main_process)
    paired, real = paired or {}, real or {}
    # a Dataset (e.g. data.SyntheticPairs) is used as it is; anything else is a paired set's root or PairedSet
    datasets = {name: root if isinstance(root, torch.utils.data.Dataset) else PairedImages(root)
                for name, root in paired.items()}  # fmt: skip  (layout errors before any work)
    for folder in real.values():
        real_photos([folder], real_split, split_key)  # a bad real-rain folder too, not after the paired sets
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of images, got {limit}")
    results = {}
    with progress_bar(enabled=show) as progress:
        for name, dataset in datasets.items():
            results[name] = score_paired(model, dataset, tile, progress, name, limit, accelerator)
        scorer = NoReference() if real else None
        for name, folder in real.items():
            results[name] = score_unpaired(model, folder, tile, progress, name, limit, scorer, accelerator,
                                           real_split, split_key)  # fmt: skip
    if show:
        Console().print(results_table(results))
    return results


def results_table(results: dict[str, dict]):
    from rich.table import Table

    table = Table(title="evaluation")
    columns = ("images", "psnr_y_db", "ssim_y", "niqe", "brisque", "images_per_s")
    table.add_column("set")
    for column in columns:
        table.add_column(column, justify="right")
    for name, row in results.items():
        cells = [f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in columns]
        table.add_row(name, *cells)
    return table


def derain_folder(
    model: nn.Module,
    in_dir: str | Path,
    out_dir: str | Path,
    tile: int | None = None,
    side_by_side: bool = False,
    show: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Derain every image of ``in_dir`` into ``out_dir`` under the same file name (and format; JPEG at quality 95).

    ``side_by_side`` saves rainy | derained next to each other instead of the derained image alone. Refuses
    (before any work) to write into ``in_dir`` itself, or over existing files unless ``overwrite``.
    """
    from PIL import Image

    files = image_files([in_dir])
    out_dir = Path(out_dir)
    targets = [out_dir / path.name for path in files]
    if out_dir.resolve() == Path(in_dir).resolve():
        raise DataError(f"{out_dir}: the output folder is the input folder; the derained images would replace "
                        "the rainy originals. Choose another output folder")  # fmt: skip
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise DataError(f"{out_dir}: {len(existing)} output file(s) exist already ({', '.join(existing[:3])}); "
                        "pass --overwrite to replace them or choose an empty folder")  # fmt: skip
    check_writable_folder(out_dir, "output folder")
    written = []
    model = model.eval()
    with progress_bar(enabled=show) as progress:
        task = progress.add_task("derain", total=len(files))
        for path, target in zip(files, targets):
            rainy = read_image(path)[None]
            derained = derain(model, rainy, tile)
            shown = torch.cat([rainy, derained], dim=-1) if side_by_side else derained
            array = to_uint8(shown[0]).permute(1, 2, 0).numpy()
            fmt = Image.registered_extensions()[path.suffix.lower()]
            atomic_write(target, lambda p, a=array, f=fmt: Image.fromarray(a).save(p, format=f, quality=95))
            written.append(target)
            progress.advance(task)
    return written


def _named(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        if not Path(path).is_dir():
            raise DataError(f"{flag} {item}: {path} is not a folder")
        out[name] = path
    return out


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of images, got {value}")
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="PSNR/SSIM on paired sets, NIQE/BRISQUE on real rain")
    score.add_argument("model")
    score.add_argument("--paired", nargs="*", default=[], help="NAME=FOLDER of a paired set (input/target layout)")
    score.add_argument("--real", nargs="*", default=[], help="NAME=FOLDER of real rainy photos (no ground truth)")
    score.add_argument("--real-split", choices=["all", "test"], default="all",
                       help="test: only each real folder's held-out half (compress.data.split_files)")  # fmt: skip
    score.add_argument("--out", type=Path, help="write the record as JSON here")
    score.add_argument("--limit", type=_positive, help="only the first N images of each set")
    rain = sub.add_parser("derain", help="derain a folder of images into another folder")
    rain.add_argument("model")
    rain.add_argument("in_dir", type=Path)
    rain.add_argument("out_dir", type=Path)
    rain.add_argument("--side-by-side", action="store_true", help="save rainy | derained next to each other")
    rain.add_argument("--overwrite", action="store_true", help="replace files that exist in the output folder")
    for p in (score, rain):
        p.add_argument("--preset", default="full", choices=sorted(PRESETS), help="architecture of an official .pth")
        p.add_argument("--tile", type=int, help="run block internals on TILE x TILE tiles (less memory, same output)")
        p.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.tile is not None and args.tile <= 0:
        parser.error(f"--tile must be a positive number of pixels, got {args.tile}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "score" and args.out:
        check_writable_folder(args.out.parent, "--out")  # before the evaluation, not after it
    model = load_model(args.model, args.preset)
    if args.command == "derain":
        written = derain_folder(model, args.in_dir, args.out_dir, args.tile, args.side_by_side,
                                overwrite=args.overwrite)  # fmt: skip
        print(f"wrote {len(written)} images to {args.out_dir}")
        return
    if not args.paired and not args.real:
        parser.error("score needs --paired and/or --real sets")
    results = evaluate(model, _named(args.paired, "--paired"), _named(args.real, "--real"), args.tile, args.limit,
                       real_split=args.real_split, split_key="--real-split")  # fmt: skip
    if args.out:
        import resource
        import sys

        peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
        record = {
            "command": " ".join(["python -m compress.evaluate", *sys.argv[1:]]),
            "model": str(args.model),
            "tile": args.tile,
            "limit": args.limit,
            "threads": torch.get_num_threads(),
            "peak_rss_gb": round(peak_rss_gb, 2),
            "sets": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, record)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    cli(main)

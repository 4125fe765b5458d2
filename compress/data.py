"""Reading deraining images and pairing rainy with clean files.

Every image becomes RGB float32 in [0, 1], shape (3, H, W): grayscale is repeated over the three
channels, RGBA and LA drop alpha (composited on nothing: deraining sets have no transparency),
palette images are expanded, and 16-bit PNGs are scaled by 65535.

Layouts (``paired_files``):
- ``<set>/input/<name>`` + ``<set>/target/<name>`` (DRSformer/Restormer layout, same file names);
- ``<set>/rain/rain-N.png`` + ``<set>/norain/norain-N.png`` (Rain100/Rain200 layout).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """Input data that cannot be used, with the file(s) named."""


def read_image(path: str | Path) -> torch.Tensor:
    """Read ``path`` as (3, H, W) float32 RGB in [0, 1]; a clear ``DataError`` names the file otherwise."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            array = _to_rgb_array(img)
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: not a readable image ({err}); replace or remove the file") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _to_rgb_array(img) -> np.ndarray:
    """PIL image of any common mode -> (H, W, 3) float32 in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.repeat((array / scale)[..., None], 3, axis=2)
        return np.clip(array, 0, 1).astype(np.float32)
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float32)
        return np.clip(np.repeat(array[..., None], 3, axis=2), 0, 1)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, LA, P, PA, RGBA, CMYK, 1
    return np.asarray(img, dtype=np.float32) / 255.0


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _folder(path: Path) -> Path | None:
    """``path`` as a folder, following a symbolic link stored as a text file (git with core.symlinks=false
    checks links out that way; ``../shared/data/rain100H/target`` is one), else None."""
    if path.is_dir():
        return path
    if path.is_file() and path.stat().st_size < 1024:
        try:
            target = (path.parent / path.read_text().strip()).resolve()
        except (UnicodeDecodeError, OSError, ValueError):
            return None
        return target if target.is_dir() else None
    return None


def paired_files(root: str | Path) -> list[tuple[Path, Path]]:
    """(rainy, clean) path pairs of a paired set in either layout, sorted by name.

    Raises ``DataError`` naming the folder for an unknown layout or an empty folder, and naming the
    files for rainy images without a clean partner (or the reverse).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected <set>/input + <set>/target or <set>/rain + <set>/norain)")
    # (rainy folder, clean folder, prefix that turns a rainy file name into its clean partner's)
    layouts = (
        (_folder(root / "input"), _folder(root / "target"), ""),
        (_folder(root / "rain"), _folder(root / "norain"), "no"),
    )
    found = next((layout for layout in layouts if layout[0] and layout[1]), None)
    if found is None:
        raise DataError(f"{root}: unknown layout; expected input/ + target/ or rain/ + norain/ subfolders")
    rainy_dir, clean_dir, prefix = found
    rainy, clean = _images(rainy_dir), _images(clean_dir)
    clean_by_name = {p.name: p for p in clean}
    pairs = [(p, clean_by_name.get(prefix + p.name)) for p in rainy]
    wanted = {prefix + p.name for p in rainy}
    orphans = [str(p) for p in clean if p.name not in wanted]
    if not pairs:
        raise DataError(f"{root}: no images found (suffixes {', '.join(IMAGE_SUFFIXES)})")
    missing = [str(r) for r, c in pairs if c is None]
    if missing or orphans:
        lines = [f"{root}: unpaired files"]
        if missing:
            lines.append(f"  rainy without a clean target ({len(missing)}): {', '.join(missing[:10])}")
        if orphans:
            lines.append(f"  clean without a rainy input ({len(orphans)}): {', '.join(orphans[:10])}")
        raise DataError("\n".join(lines))
    return pairs


def read_pair(rainy_path: Path, clean_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images of a pair; ``DataError`` naming both files if their sizes differ."""
    rainy, clean = read_image(rainy_path), read_image(clean_path)
    if rainy.shape != clean.shape:
        raise DataError(
            f"{rainy_path} is {rainy.shape[2]}x{rainy.shape[1]} but {clean_path} is {clean.shape[2]}x{clean.shape[1]}; "
            "a pair must have the same size"
        )
    return rainy, clean

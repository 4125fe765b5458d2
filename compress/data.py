"""Reading deraining images and pairing rainy with clean files.

Every image becomes RGB float32 in [0, 1], shape (3, H, W): grayscale is repeated over the three
channels, RGBA and LA drop alpha (composited on nothing: deraining sets have no transparency),
palette images are expanded, and 16-bit PNGs are scaled by 65535.

Layouts (``paired_files``):
- ``<set>/input/<name>`` + ``<set>/target/<name>`` (DRSformer/Restormer layout, same file names);
- ``<set>/rain/rain-N.png`` + ``<set>/norain/norain-N.png`` (Rain100/Rain200 layout).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """Input data that cannot be used, with the file(s) named."""


def read_image(path: str | Path) -> torch.Tensor:
    """Read ``path`` as (3, H, W) float32 RGB in [0, 1], upright by its EXIF orientation; a clear ``DataError``
    names the file otherwise."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            array = _to_rgb_array(ImageOps.exif_transpose(img))  # as a viewer shows it (EXIF orientation)
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: not a readable image ({err}); replace or remove the file") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def read_image_uint8(path: str | Path) -> torch.Tensor:
    """``path`` as (3, H, W) uint8, upright: the training loader's fast path (8-bit RGB decoded straight to
    bytes, no float round trip); other modes go through ``read_image``."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            if img.mode == "RGB" and img.getexif().get(0x0112, 1) == 1:
                return torch.from_numpy(np.array(img)).permute(2, 0, 1)
            if img.mode == "RGB":
                return torch.from_numpy(np.array(ImageOps.exif_transpose(img))).permute(2, 0, 1)
    except (OSError, SyntaxError):
        pass  # read_image names the file and the problem
    return to_uint8(read_image(path))


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
    return match_pairs(root, _images(rainy_dir), _images(clean_dir), lambda name: prefix + name)


def match_pairs(root: Path, rainy: list[Path], clean: list[Path], clean_name) -> list[tuple[Path, Path]]:
    """(rainy, clean) pairs: ``clean_name(rainy file name)`` names the partner (or, failing that, its stem does).
    ``DataError`` naming the folder if there are no rainy images, and the files that do not pair."""
    if not rainy:
        raise DataError(f"{root}: no images found (suffixes {', '.join(IMAGE_SUFFIXES)})")
    by_name, by_stem = {p.name: p for p in clean}, {p.stem: p for p in clean}
    pairs, missing = [], []
    for r in rainy:
        name = clean_name(r.name)
        c = by_name.get(name) or by_stem.get(Path(name).stem)
        if c is None:
            missing.append(str(r))
        else:
            pairs.append((r, c))
    used = {c for _, c in pairs}
    orphans = [str(c) for c in clean if c not in used]
    if missing or orphans:
        lines = [f"{root}: unpaired files"]
        if missing:
            lines.append(f"  rainy without a clean target ({len(missing)}): {', '.join(missing[:10])}")
        if orphans:
            lines.append(f"  clean without a rainy input ({len(orphans)}): {', '.join(orphans[:10])}")
        lines.append("  remove or rename them, or check the set's layout")
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


# ---------------------------------------------------------------------------------------------- training data
BUILTIN_IMAGES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
"""Colour photos bundled with scikit-image (public domain or CC0, see skimage/data/README.txt): the embedded
default training backgrounds, so a fresh machine trains without a download. ``chelsea`` is held out for validation."""


def builtin_images(names: tuple[str, ...] = BUILTIN_IMAGES) -> list[torch.Tensor]:
    """scikit-image's bundled photos (files in ``skimage.data.data_dir``) as (3, H, W) uint8 tensors."""
    from skimage import data

    return load_images([Path(data.data_dir) / name for name in names])


def image_files(folders: list[str | Path]) -> list[Path]:
    """Every image in ``folders`` (not recursive); ``DataError`` for a missing or empty folder."""
    files = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of images")
        found = _images(folder)
        if not found:
            raise DataError(f"{folder}: no images found (suffixes {', '.join(IMAGE_SUFFIXES)})")
        files += found
    return files


def split_files(files: list[Path], split: str) -> list[Path]:
    """A fixed split of photos without ground truth: ``"test"`` keeps the files whose name's SHA-1 starts with an
    even byte (about half, the same wherever the folder lies and whatever else it holds), ``"train"`` the others,
    ``"all"`` every file. A student trained on real rain (``data.real_rain_split: train``) is scored on photos it
    never saw (``eval.real_split: test``)."""
    if split == "all":
        return list(files)
    if split not in ("train", "test"):
        raise ValueError(f"split must be all, train or test, got {split!r}")
    held_out = [hashlib.sha1(Path(f).name.encode()).digest()[0] % 2 == 0 for f in files]
    return [f for f, test in zip(files, held_out) if test == (split == "test")]


def real_photos(folders: list[str | Path], split: str, split_key: str) -> list[Path]:
    """The photos of real-rain ``folders`` in ``split`` (``split_files``), or a ``DataError`` naming the folders and
    the key that chose the split (``split_key``, e.g. ``eval.real_split``) when none falls in it."""
    files = image_files(folders)
    chosen = split_files(files, split)
    if not chosen:
        where = ", ".join(map(str, folders))
        raise DataError(f"{where}: none of its {len(files)} photos falls in the {split} half that {split_key} "
                        f"{split} selects (compress.data.split_files keeps about half of a folder, by file name); "
                        f"add photos, or choose all for {split_key}")  # fmt: skip
    return chosen


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float in [0, 1] -> uint8 (a quarter of the memory for images cached in RAM)."""
    return (img * 255).round().clamp(0, 255).to(torch.uint8)


def _fingerprint(img: torch.Tensor) -> torch.Tensor:
    """A 16x16 luma thumbnail in [0, 1]: equal for the same background under recompression or small edits."""
    y = img.float().mean(0, keepdim=True)[None] / (255.0 if img.dtype == torch.uint8 else 1.0)
    return torch.nn.functional.adaptive_avg_pool2d(y, 16).flatten()


def assert_disjoint(train: list[torch.Tensor], train_names: list[str], test_roots: list[str | Path]) -> None:
    """Refuse training backgrounds that are the clean target of a test pair (Rain100 leak check).

    Compares 16x16 luma thumbnails of every training image with every test target of the same size
    (mean absolute difference < 0.01 counts as the same photo).
    """
    targets = [(f"{root}: {item['name']}", item["clean"]) for root in test_roots for item in PairedImages(root)]
    for img, name in zip(train, train_names):
        fp = _fingerprint(img)
        for path, target in targets:
            if tuple(target.shape[1:]) == tuple(img.shape[1:]) and (fp - _fingerprint(target)).abs().mean() < 0.01:
                raise DataError(
                    f"{name}: training background is the test target {path}; remove it from the training folders "
                    "(Rain100 backgrounds must never be trained on)"
                )


def _pad_to(img: torch.Tensor, size: int) -> torch.Tensor:
    """Pad (C, H, W) so both sides are >= ``size`` (reflect, or replicate where the image is too small)."""
    pad_h, pad_w = max(0, size - img.shape[1]), max(0, size - img.shape[2])
    if not (pad_h or pad_w):
        return img
    mode = "reflect" if pad_h < img.shape[1] and pad_w < img.shape[2] else "replicate"
    top, left = pad_h // 2, pad_w // 2
    padded = torch.nn.functional.pad(img[None].float(), (left, pad_w - left, top, pad_h - top), mode=mode)[0]
    return padded.to(img.dtype)


def centre_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` of (C, H, W), padded first where a side is shorter (``_pad_to``)."""
    img = _pad_to(img, size)
    top, left = (img.shape[1] - size) // 2, (img.shape[2] - size) // 2
    return img[:, top : top + size, left : left + size]


def random_crop(images: tuple[torch.Tensor, ...], size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The same random ``size`` crop, flip and 90-degree rotation (the official augmentation) of every image.

    Images smaller than ``size`` are padded first (``_pad_to``), never cropped short.
    """
    images = tuple(_pad_to(img, size) for img in images)
    h, w = images[0].shape[1:]
    top = int(torch.randint(h - size + 1, (1,), generator=gen))
    left = int(torch.randint(w - size + 1, (1,), generator=gen))
    flip, rot = torch.randint(2, (1,), generator=gen).item(), torch.randint(4, (1,), generator=gen).item()
    out = []
    for img in images:
        img = img[:, top : top + size, left : left + size]
        img = img.flip(-1) if flip else img
        out.append(torch.rot90(img, rot, (1, 2)).contiguous())
    return tuple(out)


class Patches(torch.utils.data.Dataset):
    """Endless random training patches; item ``i`` depends only on ``(seed, i)``.

    ``images`` holds clean backgrounds, ``(rainy, clean)`` pairs (``role="pair"``), or rainy photos without
    ground truth (``role="rainy"``). Clean backgrounds with ``heaviness=(lo, hi)`` become synthetic pairs:
    the item's rain (heaviness drawn in ``[lo, hi]``) comes from the same generator as its crop. Because an
    item is a pure function of its index, a resumed run that skips the batches already seen gets the very
    same pairs whatever the number of workers, and a batch of 16 is the same 16 pairs whether one process
    takes it at once or four micro-batches on two processes take it in pieces.
    """

    def __init__(self, images: list, patch_size: int, seed: int, role: str = "clean", length: int = 2**31 - 1,
                 heaviness: tuple[float, float] | None = None):  # fmt: skip
        if not images:
            raise DataError("no training images given")
        if role not in ("clean", "rainy", "pair"):
            raise ValueError(f"role must be 'clean', 'rainy' or 'pair', got {role!r}")
        if heaviness is not None and role != "clean":
            raise ValueError("heaviness (synthetic rain) needs clean backgrounds (role='clean')")
        self.images, self.patch_size, self.seed, self.role, self.length = images, patch_size, seed, role, length
        self.heaviness = heaviness

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        item = self.images[int(torch.randint(len(self.images), (1,), generator=gen))]
        crops = [
            img.float() / 255 if img.dtype == torch.uint8 else img
            for img in random_crop(item if self.role == "pair" else (item,), self.patch_size, gen)
        ]
        if self.role == "pair":
            return {"rainy": crops[0], "clean": crops[1]}
        if self.heaviness is not None:
            from compress.rain import add_rain

            lo, hi = self.heaviness
            t = lo + (hi - lo) * torch.rand(1, generator=gen)
            return {"rainy": add_rain(crops[0][None], t, gen)[0], "clean": crops[0]}
        return {self.role: crops[0]}


class PairedImages(torch.utils.data.Dataset):
    """Whole (rainy, clean) images of a paired set, for validation and evaluation.

    ``source`` is a set folder in either layout, or a Hugging Face ``datasets.Dataset`` with image
    columns ``rainy_column`` and ``clean_column`` (``hf_pairs`` builds one from a folder).
    """

    def __init__(self, source, rainy_column: str = "rainy", clean_column: str = "clean", layout: str = "auto",
                 rainy_side: str = "left"):  # fmt: skip
        if not isinstance(source, (str, Path)) and hasattr(source, "root"):  # a recipe's {root, layout, rainy_side}
            source, layout, rainy_side = source.root, source.layout, source.rainy_side
        self.hf = None if isinstance(source, (str, Path)) else source
        if self.hf is None:
            from compress.sources import FilePairs

            self.files = FilePairs(source, layout, rainy_side, cache="disk")  # layout, pairing and sizes checked
            self.names = [Path(item if isinstance(item, (str, Path)) else item[0]).name for item in self.files.items]
        else:
            missing = [c for c in (rainy_column, clean_column) if c not in self.hf.column_names]
            if missing:
                raise DataError(f"dataset has no column(s) {missing}; its columns are {self.hf.column_names}")
            self.columns = (rainy_column, clean_column)
            self.names = [f"{i:05d}" for i in range(len(self.hf))]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        if self.hf is None:
            rainy, clean = (t.float() / 255 for t in self.files[index])
        else:
            row = self.hf[index]
            rainy, clean = (torch.from_numpy(_to_rgb_array(row[c])).permute(2, 0, 1) for c in self.columns)
            if rainy.shape != clean.shape:
                raise DataError(f"dataset row {index}: rainy {tuple(rainy.shape)} != clean {tuple(clean.shape)}")
        return {"rainy": rainy, "clean": clean, "name": self.names[index]}


class SyntheticPairs(torch.utils.data.Dataset):
    """Fixed synthetic rain on clean photos, as a paired test set: image ``i`` gets the rain of generator
    ``seed + i`` at ``heaviness``, so the set is the same on every run and every machine."""

    def __init__(self, backgrounds: list[str], heaviness: float, seed: int = 12345, crop: int | None = None):
        self.files = image_files(backgrounds)
        self.heaviness, self.seed, self.crop = heaviness, seed, crop
        self.names = [f.name for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        from compress.rain import add_rain

        clean = read_image(self.files[index])
        if self.crop is not None:
            clean = centre_crop(clean, self.crop)
        clean = to_uint8(clean).float() / 255  # as a saved PNG target would be
        rainy = add_rain(clean[None], self.heaviness, torch.Generator().manual_seed(self.seed + index))[0]
        return {"rainy": to_uint8(rainy).float() / 255, "clean": clean, "name": self.names[index]}


def hf_pairs(root: str | Path):
    """A Hugging Face ``datasets.Dataset`` (columns ``rainy``, ``clean``: ``Image()``) of a paired set folder."""
    import datasets

    pairs = paired_files(root)
    table = {"rainy": [str(r) for r, _ in pairs], "clean": [str(c) for _, c in pairs]}
    features = datasets.Features({"rainy": datasets.Image(), "clean": datasets.Image()})
    return datasets.Dataset.from_dict(table, features=features)


def load_images(files: list[Path]) -> list[torch.Tensor]:
    """Decode ``files`` once into uint8 tensors (training backgrounds are small enough to keep in RAM)."""
    return [to_uint8(read_image(path)) for path in files]


# ------------------------------------------------------------------------------ from a recipe's data section
def _backgrounds(folders: list[str], builtin: tuple[str, ...]) -> tuple[list[torch.Tensor], list[str]]:
    images, names = [], []
    folders = list(folders)
    if "builtin" in folders:
        folders.remove("builtin")
        images += builtin_images(builtin)
        names += [f"skimage:{name}" for name in builtin]
    files = image_files(folders) if folders else []
    return images + load_images(files), names + [str(f) for f in files]


VALIDATION_IMAGES = ("chelsea.png",)  # the built-in photo held out of training
TRAIN_IMAGES = tuple(n for n in BUILTIN_IMAGES if n not in VALIDATION_IMAGES)


def training_patches(cfg, seed: int) -> tuple[torch.utils.data.Dataset, Patches | None]:
    """(rainy, clean) training patches from the recipe's ``data`` sources (``compress.sources``) and, if
    asked, real-rain patches without ground truth. Training images are checked against ``cfg.leak_check``."""
    from compress.sources import training_pairs

    real = None
    if cfg.real_rain:
        files = real_photos(cfg.real_rain, cfg.real_rain_split, "data.real_rain_split")
        real = Patches(load_images(files), cfg.patch_size, seed + 1, role="rainy")
    return training_pairs(cfg, seed), real


def check_data(cfg) -> None:
    """Every folder a recipe's ``data`` section names exists and holds usable images, and every paired
    training source opens (its layout and pairing checked), before any work."""
    from compress.sources import pair_layout

    for source in cfg.training_sources():  # the training data first
        if source.kind == "paired":
            pair_layout(source.root, source.layout)
    synthetic = [f for s in cfg.training_sources() if s.kind == "synthetic" for f in s.backgrounds]
    folders = [f for f in synthetic + cfg.val_backgrounds if f != "builtin"]
    image_files(folders) if folders else None
    if cfg.real_rain:  # its folders listed once: usable images, and some in the half it trains on
        real_photos(cfg.real_rain, cfg.real_rain_split, "data.real_rain_split")
    for root in list(cfg.val_sets.values()) + list(cfg.leak_check):
        PairedImages(root)


def check_writable_folder(folder: str | Path, what: str) -> None:
    """``folder`` exists or can be made, and a file can be written in it; ``DataError`` naming it otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise DataError(f"{what} {folder}: cannot write there ({err.strerror or err}); choose another folder") from None


def validation_sets(cfg) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (rainy, clean)}`` batches for validation, identical on every call and every process.

    Held-out backgrounds (centre-cropped to ``cfg.val_size``) with fixed light and heavy synthetic rain,
    plus the first images of each paired folder in ``cfg.val_sets`` (centre-cropped the same way).
    """
    from compress.rain import add_rain

    def centre(img: torch.Tensor) -> torch.Tensor:
        return centre_crop(img, cfg.val_size)

    sets = {}
    if cfg.val_backgrounds:
        images, _ = _backgrounds(cfg.val_backgrounds, VALIDATION_IMAGES)
        clean = torch.stack([centre(img).float() / 255 for img in images])
        for label, heaviness in (("light", 0.0), ("heavy", 1.0)):
            rainy = add_rain(clean, heaviness, torch.Generator().manual_seed(12345))
            sets[f"synthetic_{label}"] = (rainy, clean)
    for name, root in cfg.val_sets.items():
        images = PairedImages(root)
        pairs = [(item["rainy"], item["clean"]) for item in map(images.__getitem__, range(min(8, len(images))))]
        sets[name] = tuple(torch.stack([centre(t) for t in ts]) for ts in zip(*pairs))
    return sets

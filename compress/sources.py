"""Training sources: the paired sets deraining researchers train on, Hugging Face datasets, synthetic rain.

A recipe's ``data.sources`` lists any number of them with weights (``compress.recipe``); ``training_pairs``
turns them into one endless dataset of ``{"rainy", "clean"}`` patches. Item ``i`` is a pure function of
``(seed, i)``: a generator seeded by both picks the source by weight, the image, the crop and, for
synthetic rain, the rain. So ``--resume`` is bit-exact, and processes, which take different indices, train
on different patches.

Layouts of paired folders (``pair_layout``), as the releases ship them:
- ``input_target``: ``input/<name>`` + ``target/<name>`` (DRSformer and Restormer releases);
- ``jorder``: ``rain/`` (or ``rain/X2/``) + ``norain/``; ``norain-12x2.png`` or ``rain-12.png`` is the rainy
  version of ``norain-12.png`` (Rain100/Rain200);
- ``ddn``: ``rainy_image/12_3.jpg`` (many per clean image) + ``ground_truth/12.jpg`` (DDN-Data);
- ``side_by_side``: one file holding rainy and clean halves side by side (DID-MDN training images);
- ``list``: a text file of ``rainy clean`` paths, one pair a line, relative to the file's folder (SPA-Data).

Files are decoded when an item needs them, in DataLoader workers; a set whose decoded size is under
``cache_mb`` is decoded once into RAM instead (``cache: auto``). Everything checkable is checked when the
source is opened, before training: names that do not pair, list lines naming missing files, rainy/clean size
mismatches, odd side-by-side widths, clean DDN images without rainy versions, missing dataset columns.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from compress.data import (
    TRAIN_IMAGES,
    DataError,
    Patches,
    _backgrounds,
    _folder,
    _images,
    image_files,
    match_pairs,
    paired_files,
    read_image,
    read_image_uint8,
    to_uint8,
)

HEADER_CHECKS = 20_000  # sizes of up to this many pairs are read from the file headers when a source opens
LAYOUTS = ("input_target", "jorder", "ddn", "side_by_side", "list")


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only, upright by the EXIF orientation."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: not a readable image ({err}); replace or remove the file") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def detect_layout(root: Path) -> str:
    if root.is_file():
        return "list"
    if _folder(root / "input") and _folder(root / "target"):
        return "input_target"
    if _folder(root / "rain") and _folder(root / "norain"):
        return "jorder"
    if _folder(root / "rainy_image") and _folder(root / "ground_truth"):
        return "ddn"
    raise DataError(f"{root}: cannot tell the layout (expected input/ + target/, rain/ + norain/, rainy_image/ + "
                    "ground_truth/ or a list file); set the source's layout: side_by_side for single files holding "
                    "both images")  # fmt: skip


def _jorder_clean_name(rainy: str) -> str:
    """``norain-12x2.png`` / ``rain-12.png`` -> ``norain-12.png``."""
    stem, dot, suffix = rainy.rpartition(".")
    stem = re.sub(r"x\d+$", "", stem)
    if stem.startswith("rain-"):
        stem = "no" + stem
    return f"{stem}{dot}{suffix}"


def _list_pairs(list_file: Path) -> list[tuple[Path, Path]]:
    if not list_file.is_file():
        raise DataError(f"{list_file}: list file not found")
    base, pairs = list_file.parent, []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{list_file}:{number}: expected 'rainy clean' (two paths), got {line.strip()!r}")
        paths = []
        for part in parts:
            path = Path(part)
            if not path.is_absolute() or not path.exists():  # SPA-Data's lines start with "/" but are relative
                path = base / part.lstrip("/")
            if not path.is_file():
                raise DataError(f"{list_file}:{number}: {part} does not exist (looked for {path}); fix the line or "
                                "the data folder")  # fmt: skip
            paths.append(path)
        pairs.append(tuple(paths))
    if not pairs:
        raise DataError(f"{list_file}: no pairs listed")
    return pairs


def pair_layout(root: str | Path, layout: str = "auto") -> tuple[str, list]:
    """(layout, items): ``(rainy, clean)`` path pairs, or single paths for ``side_by_side``."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: not found; put the data set there, or point the recipe at it (--set with the key "
                        "that names this path: data.sources, data.val_sets, data.leak_check or eval.paired)")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "input_target":
        return layout, paired_files(root)
    if layout == "jorder":
        rain_dir = _folder(root / "rain" / "X2") or _folder(root / "rain")
        clean_dir = _folder(root / "norain")
        if rain_dir is None or clean_dir is None:
            raise DataError(f"{root}: layout jorder needs rain/ (or rain/X2/) and norain/ subfolders")
        return layout, match_pairs(root, _images(rain_dir), _images(clean_dir), _jorder_clean_name)
    if layout == "ddn":
        rain_dir, clean_dir = _folder(root / "rainy_image"), _folder(root / "ground_truth")
        if rain_dir is None or clean_dir is None:
            raise DataError(f"{root}: layout ddn needs rainy_image/ and ground_truth/ subfolders")

        def clean_name(name: str) -> str:
            stem, _, suffix = name.rpartition(".")
            return f"{stem.rsplit('_', 1)[0]}.{suffix}"

        return layout, match_pairs(root, _images(rain_dir), _images(clean_dir), clean_name)
    if layout == "side_by_side":
        return layout, image_files([root])
    if layout == "list":
        return layout, _list_pairs(root)
    raise DataError(f"{root}: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


class FilePairs:
    """Pairs on disk, decoded on demand (or once into RAM): ``pairs[j]`` -> (rainy, clean) uint8 tensors."""

    def __init__(self, root, layout: str = "auto", rainy_side: str = "left", cache: str = "auto",
                 cache_mb: int = 2048):  # fmt: skip
        self.root = Path(root)
        self.layout, self.items = pair_layout(self.root, layout)
        self.rainy_side = rainy_side
        step = max(1, len(self.items) // HEADER_CHECKS)
        pixels = 0
        for item in self.items[::step]:
            pixels += self._check(item)
        decoded_mb = pixels * step * 3 * 2 / 2**20
        self.cache = None
        if cache == "ram" or (cache == "auto" and decoded_mb <= cache_mb):
            self.cache = [self._decode(item) for item in self.items]

    def _check(self, item) -> int:
        if self.layout == "side_by_side":
            w, h = _size(item)
            if w % 2:
                raise DataError(f"{item}: a side-by-side image must have an even width (rainy | clean), got {w}x{h}")
            return w // 2 * h
        (wr, hr), (wc, hc) = _size(item[0]), _size(item[1])
        if (wr, hr) != (wc, hc):
            raise DataError(f"{item[0]} is {wr}x{hr} but {item[1]} is {wc}x{hc}; a pair must have the same size")
        return wr * hr

    def _decode(self, item) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layout == "side_by_side":
            img = read_image_uint8(item)
            if img.shape[2] % 2:
                raise DataError(f"{item}: a side-by-side image must have an even width, got {img.shape[2]}")
            left, right = img[:, :, : img.shape[2] // 2], img[:, :, img.shape[2] // 2 :]
            return (left, right) if self.rainy_side == "left" else (right, left)
        rainy, clean = (read_image_uint8(p) for p in item)
        if rainy.shape != clean.shape:
            raise DataError(f"{item[0]} is {rainy.shape[2]}x{rainy.shape[1]} but {item[1]} is "
                            f"{clean.shape[2]}x{clean.shape[1]}; a pair must have the same size")  # fmt: skip
        return rainy, clean

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache[j] if self.cache is not None else self._decode(self.items[j])

    def clean_images(self):
        """(name, clean image) of every distinct clean image (for the leak check)."""
        if self.layout == "side_by_side":
            for j, item in enumerate(self.items):
                yield str(item), self[j][1]
            return
        seen = set()
        for j, (_, clean) in enumerate(self.items):
            if clean not in seen:
                seen.add(clean)
                yield str(clean), self.cache[j][1] if self.cache is not None else to_uint8(read_image(clean))


class HFPairs:
    """Rows of a Hugging Face dataset saved with ``save_to_disk``, read lazily: ``pairs[j]`` -> (rainy, clean)."""

    def __init__(self, path, split: str | None = None, rainy_column: str = "rainy", clean_column: str = "clean"):
        import datasets

        from compress.data import _to_rgb_array

        self._to_array = _to_rgb_array
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: no dataset there; save one with Dataset.save_to_disk "
                            "(compress.data.hf_pairs builds one from a paired folder)")  # fmt: skip
        try:
            data = datasets.load_from_disk(str(path))
        except Exception as err:  # datasets raises several types for a folder it cannot read
            raise DataError(f"{path}: not a dataset saved with save_to_disk ({err})") from None
        if isinstance(data, datasets.DatasetDict):
            if split is None or split not in data:
                raise DataError(f"{path}: a DatasetDict with splits {sorted(data)}; set the source's split")
            data = data[split]
        missing = [c for c in (rainy_column, clean_column) if c not in data.column_names]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; its columns are {data.column_names}; set the source's "
                            "rainy_column and clean_column")  # fmt: skip
        if len(data) == 0:
            raise DataError(f"{path}: the dataset has no rows")
        self.data, self.columns, self.name = data, (rainy_column, clean_column), str(path)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.data[j]
        rainy, clean = (to_uint8(torch.from_numpy(self._to_array(row[c])).permute(2, 0, 1)) for c in self.columns)
        if rainy.shape != clean.shape:
            raise DataError(f"{self.name} row {j}: rainy {tuple(rainy.shape)} and clean {tuple(clean.shape)} differ")
        return rainy, clean

    def clean_images(self):
        for j in range(len(self)):
            yield f"{self.name} row {j}", self[j][1]


class Mixture(torch.utils.data.Dataset):
    """Several sources' patch datasets mixed by weight: item ``i`` draws its source from ``(seed, i)`` and is
    that source's item ``i``."""

    def __init__(self, parts: list[torch.utils.data.Dataset], weights: list[float], seed: int):
        self.parts, self.seed = parts, seed
        self.bounds = torch.tensor(weights, dtype=torch.float64).cumsum(0) / sum(weights)

    def __len__(self) -> int:
        return min(len(p) for p in self.parts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 7_000_003 + index)
        # one uniform draw against the cumulative weights (torch.multinomial's first draw from consecutively
        # seeded generators is measurably biased: 267 of 400 instead of 300 at 3:1)
        u = torch.rand(1, generator=gen, dtype=torch.float64)
        part = min(int(torch.searchsorted(self.bounds, u, right=True)), len(self.parts) - 1)
        return self.parts[part][index]


def open_source(source) -> tuple[str, object, list[tuple[str, torch.Tensor]] | None]:
    """(role, images, named clean images) for ``Patches`` and the leak check: the recipe's ``data.sources``
    entry opened and checked. The named images are ``None`` for pairs (read lazily by the leak check)."""
    if source.kind == "synthetic":
        images, names = _backgrounds(source.backgrounds, TRAIN_IMAGES)
        return "clean", images, list(zip(names, images))
    if source.kind == "paired":
        return "pair", FilePairs(source.root, source.layout, source.rainy_side, source.cache, source.cache_mb), None
    return "pair", HFPairs(source.path, source.split, source.rainy_column, source.clean_column), None


def training_pairs(cfg, seed: int) -> torch.utils.data.Dataset:
    """The endless ``{"rainy", "clean"}`` patch dataset of a recipe's ``data`` section, leak-checked.

    One source gives its ``Patches`` directly (the stream of recipes from before ``sources`` existed, item
    for item); several give a ``Mixture``. Source ``k`` draws with seed ``seed + 1000 * k``.
    """
    from compress.data import assert_disjoint

    parts, weights = [], []
    for k, source in enumerate(cfg.training_sources()):
        role, images, named = open_source(source)
        if cfg.leak_check:
            names, cleans = zip(*(named if named is not None else images.clean_images()))
            assert_disjoint(list(cleans), list(names), cfg.leak_check)
        heaviness = source.heaviness if role == "clean" else None
        parts.append(Patches(images, cfg.patch_size, seed + 1000 * k, role=role, heaviness=heaviness))
        weights.append(source.weight)
    return parts[0] if len(parts) == 1 else Mixture(parts, weights, seed)

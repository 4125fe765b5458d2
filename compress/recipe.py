"""Typed recipes: one YAML per experiment, validated before any work.

``load_recipe("recipes/prune50_distill.yaml", ["train.lr=1.0e-4"])`` -> ``Recipe``. Every model is a pydantic
v2 model with ``extra="forbid"`` and ``frozen=True``: unknown keys and wrong types are errors that name the
YAML path (``train.lr: Input should be a valid number``), prefixed with the file name. Defaults live here
and only here. Leaving out ``prune``/``distill``/``lora``/``teacher`` skips that stage.

Why pydantic and not dataclasses: typed paths in errors and tagged unions come for free.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drsformer import PRESETS, DRSformerConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Strict):
    """The architecture of a model trained from scratch: a preset, or the official constructor's keywords."""

    preset: str | None = "tiny"
    dim: int | None = None
    num_blocks: tuple[int, int, int, int] | None = None
    heads: tuple[int, int, int, int] | None = None
    ffn_expansion_factor: float = 2.66
    mefc: bool = True

    @model_validator(mode="after")
    def _one_source(self):
        if self.dim is None and self.preset not in PRESETS:
            raise ValueError(
                f"preset must be one of {sorted(PRESETS)} (or give dim/num_blocks/heads), got {self.preset!r}"
            )
        return self

    def config(self) -> DRSformerConfig:
        if self.dim is None:
            return DRSformerConfig.preset(self.preset)
        return DRSformerConfig.from_official_kwargs(
            dim=self.dim,
            num_blocks=self.num_blocks or (4, 6, 6, 8),
            heads=self.heads or (1, 2, 4, 8),
            ffn_expansion_factor=self.ffn_expansion_factor,
            mefc=self.mefc,
        )


class PairedSet(Strict):
    """A paired test or validation set in any layout (``PairedSource``'s); a plain string is its root, auto layout."""

    root: str
    layout: Literal["auto", "input_target", "jorder", "ddn", "side_by_side", "list"] = "auto"
    rainy_side: Literal["left", "right"] = "left"


PairedRef = str | PairedSet


class SyntheticSource(Strict):
    """Synthetic rain (``compress.rain``) on clean backgrounds, drawn per patch."""

    kind: Literal["synthetic"]
    backgrounds: list[str] = ["builtin"]
    heaviness: tuple[float, float] = (0.0, 1.0)
    weight: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _check(self):
        _check_heaviness(self.heaviness)
        return self


def _check_heaviness(heaviness: tuple[float, float]) -> None:
    lo, hi = heaviness
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"heaviness must be [lo, hi] with 0 <= lo <= hi <= 1, got {list(heaviness)}")


class PairedSource(Strict):
    """A paired training set on disk in the layout its release ships in (``compress.data.pair_layout``):
    ``input_target`` (input/ + target/, same names: DRSformer, Restormer), ``jorder`` (rain/ or rain/X2/ +
    norain/: ``norain-12x2.png`` or ``rain-12.png`` for ``norain-12.png``; Rain100/Rain200), ``ddn``
    (rainy_image/12_3.jpg for ground_truth/12.jpg), ``side_by_side`` (each file rainy | clean; DID-MDN),
    ``list`` (a text file of ``rainy clean`` paths, one pair a line; SPA-Data), or ``auto`` (the folder's
    subfolders tell)."""

    kind: Literal["paired"]
    root: str  # the set's folder, or the list file for layout "list"
    layout: Literal["auto", "input_target", "jorder", "ddn", "side_by_side", "list"] = "auto"
    rainy_side: Literal["left", "right"] = "left"  # side_by_side: which half is the rainy image
    weight: float = Field(1.0, ge=0)
    cache: Literal["auto", "ram", "disk"] = "auto"  # auto: in RAM when the decoded set is under cache_mb
    cache_mb: int = Field(2048, ge=0)


class HFSource(Strict):
    """A Hugging Face ``datasets`` dataset saved on disk (``save_to_disk``), rows read lazily."""

    kind: Literal["hf"]
    path: str
    split: str | None = None  # for a DatasetDict
    rainy_column: str = "rainy"
    clean_column: str = "clean"
    weight: float = Field(1.0, ge=0)


Source = Annotated[SyntheticSource | PairedSource | HFSource, Field(discriminator="kind")]


class DataConfig(Strict):
    """Training patches: ``sources`` mixed by weight (paired sets, HF datasets, synthetic rain), or by default
    synthetic rain on ``backgrounds``; optional real rain without ground truth for students."""

    sources: list[Source] = []  # empty: one synthetic source from backgrounds + heaviness below

    backgrounds: list[str] = ["builtin"]  # folders of clean photos; "builtin" = scikit-image's bundled photos
    patch_size: int = Field(128, ge=16)
    heaviness: tuple[float, float] = (0.0, 1.0)  # synthetic rain sampled uniformly: 0 Rain100L-like .. 1 Rain100H-like
    real_rain: list[str] = []  # folders of rainy photos without ground truth (distillation targets only)
    real_rain_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # share of each batch drawn from real_rain
    # train: only the photos that compress.data.split_files does not hold out for eval.real_split: test
    real_rain_split: Literal["all", "train"] = "all"
    val_backgrounds: list[str] = ["builtin"]  # held-out clean photos, rained at heaviness 0 and 1 for validation
    val_sets: dict[str, PairedRef] = {}  # paired sets for validation (their first 8 images, centre-cropped)
    val_size: int = Field(256, ge=32)  # validation images are centre-cropped to this (cheap, same every time)
    leak_check: list[PairedRef] = []  # paired test sets whose targets must not be training images
    workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self):
        _check_heaviness(self.heaviness)
        if self.real_rain_fraction > 0 and not self.real_rain:
            raise ValueError("real_rain_fraction > 0 needs real_rain folders")
        if self.sources and sum(s.weight for s in self.sources) <= 0:
            raise ValueError("sources: every weight is 0; give at least one source a positive weight")
        return self

    def training_sources(self) -> list:
        """The sources to train on: ``sources``, or the synthetic source that ``backgrounds`` describes."""
        if self.sources:
            return [s for s in self.sources if s.weight > 0]
        return [SyntheticSource(kind="synthetic", backgrounds=self.backgrounds, heaviness=self.heaviness)]


class TrainConfig(Strict):
    """The official DRSformer schedule by default (``../shared/DRSFORMER.md``); counting in steps."""

    steps: int = Field(300_000, ge=1)
    batch_size: int = Field(16, ge=1)  # patches per optimizer step over all processes (official: 4 per GPU x 4)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3.0e-4, gt=0)
    lr_hold_steps: int = Field(92_000, ge=0)  # constant lr, then cosine to lr_min over the rest (if any)
    lr_min: float = Field(1.0e-6, ge=0)
    weight_decay: float = Field(1.0e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(0.01, gt=0)  # global grad-norm clip (upstream hard-codes 0.01)
    # autocast; "auto": bf16 where it runs natively (CUDA with bf16, a CPU whose oneDNN has bf16 kernels), else
    # fp32 (on an AVX2-only CPU bf16 falls back to reference kernels, ~10x slower: benchmarks/train_precision.py)
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"
    eval_every: int = Field(5000, ge=1)
    save_every: int = Field(5000, ge=1)
    log_every: int = Field(100, ge=1)
    tensorboard: bool = False
    threads: int | None = Field(None, ge=1)  # torch CPU threads per process
    compile: bool = False  # torch.compile the model (training through accelerate's dynamo plugin, and evaluation)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # inductor generates kernels (minutes on a CPU for the tiny model); aot_eager only traces (a quick check)
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        return "no" if value is False else value  # YAML reads an unquoted `no` (and --set ...=no) as false

    def compile_options(self) -> dict:
        """``torch.compile`` keywords of this schedule (``mode`` is inductor's alone)."""
        inductor = self.compile_backend == "inductor"
        return {"backend": self.compile_backend, "mode": self.compile_mode if inductor else None}

    @model_validator(mode="after")
    def _check(self):
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}) > lr ({self.lr})")
        return self


class SyntheticTest(Strict):
    """A test set of fixed synthetic rain on held-out clean photos (the training distribution's own test set)."""

    backgrounds: list[str]
    heaviness: float = Field(0.5, ge=0, le=1)
    seed: int = 12345
    crop: int | None = Field(None, ge=16)  # centre crop (None: whole images)


class EvalConfig(Strict):
    paired: dict[str, PairedRef] = {}  # name -> paired set, scored with PSNR/SSIM (Y)
    synthetic: dict[str, SyntheticTest] = {}  # name -> fixed synthetic rain on held-out photos, scored the same way
    real: dict[str, str] = {}  # name -> folder of real rainy photos, scored with NIQE/BRISQUE
    real_split: Literal["all", "test"] = "all"  # test: only the held-out half (compress.data.split_files)
    limit: int | None = Field(None, ge=1)  # first N images per set (quick runs)
    tile: int | None = Field(None, ge=32)
    latency_size: int = Field(256, ge=32)  # CPU latency is measured at this square size
    latency_repeats: int = Field(3, ge=1)
    published: dict[str, dict[str, float]] = {}  # set -> the paper's {psnr_y_db, ssim_y}, shown beside the run's


class TeacherSpec(Strict):
    """Where the teacher comes from: a ``save_pretrained`` folder, an official ``.pth``, or a recipe to train."""

    path: str | None = None
    preset: str = "full"  # architecture of an official .pth
    recipe: str | None = None  # a teacher recipe; trained first unless its final model exists

    @model_validator(mode="after")
    def _one(self):
        if (self.path is None) == (self.recipe is None):
            raise ValueError("give exactly one of teacher.path and teacher.recipe")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        return self


class PruneConfig(Strict):
    """Structured pruning (``compress.prune``). Ratios are the share of each unit removed."""

    criterion: Literal["l1", "l2", "taylor", "random"] = "l1"
    target_macs: float | None = Field(None, gt=0, le=1)  # keep <= this share of the teacher's MACs (global ranking)
    target_params: float | None = Field(None, gt=0, le=1)
    units: list[Literal["head_channels", "heads", "ffn", "experts", "steps", "blocks", "width"]] = [
        "head_channels",
        "ffn",
        "experts",
    ]
    ratios: dict[str, float] = {}  # per-unit ratio, instead of a global target
    # global target only: remove at most this share of any one family (a stream's width, a block's heads or
    # MSFN pairs, a MEFC step's experts, a stage's blocks); 1.0 = no cap
    max_ratio: float = Field(1.0, gt=0, le=1)
    calibration_batches: int = Field(4, ge=1)
    calibration_batch_size: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _check(self):
        targets = sum(x is not None for x in (self.target_macs, self.target_params)) + bool(self.ratios)
        if targets != 1:
            raise ValueError("give exactly one of ratios, target_macs and target_params")
        if self.ratios and self.max_ratio < 1:
            raise ValueError(
                "max_ratio caps a global target (target_macs or target_params); with ratios, lower the ratios"
            )
        for unit, ratio in self.ratios.items():
            if not 0 <= ratio < 1:
                raise ValueError(f"ratios.{unit}: {ratio} is outside [0, 1)")
        return self


class DistillConfig(Strict):
    """Loss weights of the student's training; teacher frozen. ``taps`` are module paths of both networks."""

    gt_weight: float = Field(1.0, ge=0)  # L1 to the clean image (synthetic pairs only)
    output_weight: float = Field(1.0, ge=0)  # L1 to the teacher's output
    feature_weight: float = Field(0.0, ge=0)
    attention_weight: float = Field(0.0, ge=0)  # L1 on every TKSA's cosine logits at the kept heads/channels
    taps: list[str] = ["encoder_level1", "encoder_level2", "encoder_level3", "latent", "decoder_level1"]
    adapters: Literal["conv1x1", "kept_channels"] = "conv1x1"  # kept_channels: compare the channels pruning kept


class LoraSpec(Strict):
    """LoRA recovery (peft) on the student's 1x1 convs, merged into plain weights at export."""

    rank: int = Field(4, ge=1)
    alpha: float = Field(8.0, gt=0)
    # name suffixes of 1x1 convs; not ffn.project_out, whose weight the fast MSFN applies in two halves
    targets: list[str] = ["attn.qkv", "attn.project_out", "ffn.project_in"]


class ExportConfig(Strict):
    """Deploy the trained model as a recipe stage (``compress.export``); the record gets its PSNR and latency."""

    to: Literal["onnx", "openvino"] = "openvino"
    precision: Literal["fp32", "bf16", "int8"] = "bf16"
    check_limit: int = Field(5, ge=1)  # images per eval.paired set scored with the deployed artefact

    @model_validator(mode="after")
    def _check(self):
        if self.to == "onnx" and self.precision != "fp32":
            raise ValueError("onnx exports are fp32; use to: openvino for bf16 and int8")
        return self


class Target(Strict):
    """A stated goal of a study student, checked in ``summary.md``: its PSNR minus the reference's (mean over
    images, every set it shares with the reference unless ``sets`` names some) is at least ``at_least_db``;
    ``-0.15`` reads "within 0.15 dB of", ``0.5`` "at least 0.5 dB above"."""

    reference: str  # "teacher" or a recipe name (a control)
    at_least_db: float
    sets: list[str] = []


class Recipe(Strict):
    name: str
    seed: int = 100
    model: ModelSpec = ModelSpec()  # the architecture when training from scratch
    teacher: TeacherSpec | None = None
    prune: PruneConfig | None = None
    distill: DistillConfig | None = None
    lora: LoraSpec | None = None
    student_init: Literal["pruned", "random"] = "pruned"  # random: the same student config from scratch
    # a control run (the teacher trained on, a scratch student): summary.md compares every student of the same
    # teacher with it as with the teacher
    control: bool = False
    targets: list[Target] = []  # the study's goals for this student, checked against the records in summary.md
    compare: list[str] = []  # other recipes (by name) whose difference to this one summary.md gives, with intervals
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig | None = None  # deploy the final model (ONNX Runtime / OpenVINO) and record it
    out_dir: str = "runs"  # checkpoints go to <out_dir>/<name>/

    @model_validator(mode="after")
    def _check(self):
        if (self.prune or self.distill or self.lora) and self.teacher is None:
            raise ValueError("prune/distill/lora need a teacher")
        if self.student_init == "random" and self.prune is None:
            raise ValueError("student_init: random needs prune (it defines the student's config)")
        if self.data.real_rain_fraction > 0 and self.distill is None:
            raise ValueError("data.real_rain_fraction > 0 needs distill (real rain has no ground truth)")
        trained = {os.path.realpath(f) for f in self.data.real_rain} if self.data.real_rain_fraction > 0 else set()
        split = (self.data.real_rain_split, self.eval.real_split)
        for name, folder in self.eval.real.items():
            if os.path.realpath(folder) in trained and split != ("train", "test"):
                raise ValueError(
                    f"eval.real.{name} scores {folder}, the photos data.real_rain trains on: set "
                    "data.real_rain_split: train and eval.real_split: test (a fixed half of the folder each), or "
                    "score another folder"
                )
        return self

    @property
    def stem(self) -> str:
        """The run's key: ``name``, or ``name_seed<N>`` when the seed is not the default (repeats of a recipe)."""
        default = type(self).model_fields["seed"].default
        return self.name if self.seed == default else f"{self.name}_seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.stem


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the YAML path."""


def _set(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = tree.get(key)
        if node is None:
            node = tree[key] = {}
        if not isinstance(node, dict):
            raise RecipeError(f"--set {dotted}: {key} is not a section")
        tree = node
    tree[keys[-1]] = value


def _read_tree(path: Path, chain: tuple[Path, ...] = (), bases: list[Path] | None = None) -> dict:
    """One recipe file's mapping with its ``base`` (a recipe it extends, relative to its own folder) merged under it;
    each base read is appended to ``bases``."""
    if chain and bases is not None:
        bases.append(path)
    try:
        tree = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise RecipeError(f"{path}: recipe file not found" + (f" (the base of {chain[-1]})" if chain else "")) from err
    except IsADirectoryError as err:
        raise RecipeError(f"{path}: is a folder; give a recipe .yaml file") from err
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from err
    if tree is None:
        raise RecipeError(f"{path}: the recipe is empty; an empty recipe would train the default model for the "
                          "official 300,000 steps. Copy one from recipes/ and edit it")  # fmt: skip
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, got {type(tree).__name__}")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str) or not base:
        raise RecipeError(f"{path}: base: expected the file name of the recipe this one extends, got {_short(base)}")
    parent = path.parent / base
    if any(parent.resolve() == seen.resolve() for seen in (*chain, path)):
        cycle = " -> ".join(str(p) for p in (*chain, path, parent))
        raise RecipeError(f"{path}: base: {base} extends itself ({cycle}); remove one base")
    merged = _read_tree(parent, (*chain, path), bases)
    merged.pop("name", None)  # a recipe's name is its own (its file's stem unless it says otherwise)
    return _merge(merged, tree)


def _merge(base: dict, tree: dict) -> dict:
    """``tree`` over ``base``: sections merge key by key, anything else (lists too) replaces the base's value."""
    out = dict(base)
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override (``key.sub=value``, value parsed as YAML) and validate a recipe; ``name`` defaults to the stem.

    ``base: other.yaml`` (relative to the recipe's folder) makes a recipe the other one with its own keys on top:
    sections merge key by key, lists and values replace, ``name`` is never inherited."""
    path = Path(path)
    bases: list[Path] = []
    tree = _read_tree(path, bases=bases)
    tree.setdefault("name", path.stem)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RecipeError(f"--set {item!r}: the value is not valid YAML ({str(err).splitlines()[0]}); quote "
                              "strings and close brackets, e.g. --set 'data.backgrounds=[\"a\", \"b\"]'") from None
        _set(tree, key, value)
    try:
        return Recipe.model_validate(tree)
    except ValidationError as err:
        extends = f" (with its base {', '.join(map(str, bases))})" if bases else ""
        lines = [f"{path}{extends}: {err.error_count()} problem(s)"]
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {where}: {e['msg']}" + (f" (got {_short(e['input'])})" if e["type"] != "missing" else ""))
        raise RecipeError("\n".join(lines)) from None


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

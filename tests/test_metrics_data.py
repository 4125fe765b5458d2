"""compress.metrics against the published numbers and pyiqa; compress.data reading and pairing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress.data import DataError, paired_files, read_image, read_pair
from compress.metrics import psnr_y, ssim_y

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found (tests expect ../shared beside the repository)")
    return path


@pytest.mark.parametrize("name,published_db", [("rain100L", 26.90), ("rain100H", 13.56)])
def test_identity_model_reproduces_published_input_psnr(name, published_db):
    pairs = paired_files(need(DATA / name))
    assert len(pairs) == 100
    scores = [psnr_y(*(t[None] for t in read_pair(r, c))).item() for r, c in pairs]
    assert round(float(np.mean(scores)), 2) == published_db


def test_psnr_and_ssim_agree_with_pyiqa_ycbcr():
    pyiqa = pytest.importorskip("pyiqa")
    psnr_ref = pyiqa.create_metric("psnr", test_y_channel=True, color_space="ycbcr", device="cpu")
    ssim_ref = pyiqa.create_metric("ssim", test_y_channel=True, color_space="ycbcr", device="cpu")
    for name in ("rain100H", "rain100L"):
        for rainy_path, clean_path in paired_files(need(DATA / name))[:2]:
            rainy, clean = (t[None] for t in read_pair(rainy_path, clean_path))
            assert abs(psnr_y(rainy, clean).item() - psnr_ref(rainy, clean).item()) < 0.01, rainy_path
            assert abs(ssim_y(rainy, clean).item() - ssim_ref(rainy, clean).item()) < 0.001, rainy_path


def test_metric_properties():
    torch.manual_seed(0)
    clean = torch.rand(2, 3, 32, 40)
    noisy = (clean + 0.05 * torch.randn_like(clean)).clamp(0, 1)
    assert torch.allclose(ssim_y(clean, clean), torch.ones(2, dtype=torch.float64))
    assert (psnr_y(clean, clean) > 90).all()
    assert (psnr_y(noisy, clean) < 35).all() and (ssim_y(noisy, clean) < 0.99).all()
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_y(clean, clean[..., :20])
    with pytest.raises(ValueError, match="expected \\(B, 3, H, W\\)"):
        psnr_y(clean[:, :1], clean[:, :1])


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_read_image_converts_modes(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    rgba = np.dstack([np.full((6, 8, 3), 200, np.uint8), np.full((6, 8), 7, np.uint8)])
    deep = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300
    out = {
        "gray": read_image(_save(tmp_path / "g.png", gray)),
        "rgba": read_image(_save(tmp_path / "a.png", rgba)),
        "deep": read_image(_save(tmp_path / "d.png", deep)),
    }
    palette = Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "pal.png")
    out["palette"] = read_image(tmp_path / "pal.png")
    for name, img in out.items():
        assert img.shape == (3, 6, 8) and img.dtype == torch.float32, name
        assert 0 <= img.min() and img.max() <= 1, name
    assert torch.allclose(out["gray"][0], torch.from_numpy(gray / 255.0).float())
    assert torch.equal(out["gray"][0], out["gray"][2])
    assert torch.allclose(out["rgba"], torch.full((3, 6, 8), 200 / 255))
    assert torch.allclose(out["deep"][1], torch.from_numpy(deep / 65535.0).float(), atol=1e-6)
    assert torch.allclose(out["palette"], torch.full((3, 6, 8), 90 / 255))


def test_paired_files_layouts_and_errors(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    for n in (1, 2):
        _save(tmp_path / "a" / "input" / f"{n}.png", img)
        _save(tmp_path / "a" / "target" / f"{n}.png", img)
        _save(tmp_path / "b" / "rain" / f"rain-{n}.png", img)
        _save(tmp_path / "b" / "norain" / f"norain-{n}.png", img)
    assert [(r.name, c.name) for r, c in paired_files(tmp_path / "a")] == [("1.png", "1.png"), ("2.png", "2.png")]
    assert [(r.name, c.name) for r, c in paired_files(tmp_path / "b")] == [
        ("rain-1.png", "norain-1.png"),
        ("rain-2.png", "norain-2.png"),
    ]

    _save(tmp_path / "a" / "input" / "3.png", img)
    with pytest.raises(DataError, match=r"rainy without a clean target \(1\): .*input/3.png"):
        paired_files(tmp_path / "a")
    (tmp_path / "e" / "input").mkdir(parents=True)
    (tmp_path / "e" / "target").mkdir()
    with pytest.raises(DataError, match="no images found"):
        paired_files(tmp_path / "e")
    with pytest.raises(DataError, match="unknown layout"):
        paired_files(tmp_path / "a" / "input")

    _save(tmp_path / "c" / "input" / "1.png", img)
    _save(tmp_path / "c" / "target" / "1.png", np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(DataError, match="is 8x8 but .*target/1.png is 9x8"):
        read_pair(*paired_files(tmp_path / "c")[0])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: not a readable image"):
        read_image(tmp_path / "bad.png")

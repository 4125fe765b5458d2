"""Run records: one JSON per recipe run in ``results/runs/``, and the Pareto front over them.

Dirty-tree runs (uncommitted changes) and ``--scratch`` runs go to ``results/scratch/`` (gitignored), so
every committed record names the commit that reproduces it.
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from drsformer.io import write_json

RESULTS = Path("results")
PACKAGES = ("torch", "accelerate", "datasets", "peft", "pyiqa", "rich", "pydantic")


def git_state(repo: Path | None = None) -> dict:
    """Commit and dirty flag of the checkout that holds the running code (``unknown`` outside git).

    ``repo`` defaults to the checkout this package was imported from, not the working directory: with an
    editable install, a run started in another checkout of the project still runs this one's code.
    Dirty means a tracked source file differs from the commit; ``results/`` is left out, since every run
    regenerates the tracked summary and plots there (otherwise the second run of a study would count as
    dirty because of the first one's plots).
    """
    repo = Path(__file__).resolve().parents[1] if repo is None else repo
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        sources = ["--", ":/", ":(top,exclude)results"]
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", *sources], cwd=repo,
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": True}
    return {"commit": commit, "dirty": bool(status.strip())}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; what decides, e.g., whether bf16 has kernels), else ``platform``'s."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({cpu_model()})"
    return {"packages": versions, "python": platform.python_version(), "device": device,
            "cpu_threads": torch.get_num_threads()}  # fmt: skip


def record_path(stem: str, scratch: bool, results: Path = RESULTS) -> Path:
    return results / ("scratch" if scratch else "runs") / f"{stem}.json"


def write_record(record: dict, path: Path) -> Path:
    """Write one run record atomically (a failed run writes nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return path


def read_records(folder: Path) -> list[dict]:
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a valid run record ({err}); delete it or re-run its recipe") from err
    return records


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: x lower is better, y higher is better; sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], float("-inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def paired_bootstrap(a: list[float], b: list[float], resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """Mean of ``a - b`` over paired items (images) and its 95% percentile-bootstrap interval."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_bootstrap needs two equally long non-empty lists, got {len(a)} and {len(b)}")
    diff = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    means = diff[torch.randint(len(diff), (resamples, len(diff)), generator=gen)].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return diff.mean().item(), lo, hi

"""CPU latency of every recorded run, measured side by side in one process.

    python -m benchmarks.study_latency                 # models from runs/<stem>/final, records from results/runs

Each run's record carries the latency measured at the end of that run, but runs happen at different times
on a shared machine (here: often two at once), and that drift is larger than the differences between
students. This measures all final models in one process, round-robin (one forward of each model per
round, ``--repeats`` rounds after one warm-up round), and keeps the median per model. Writes
``results/bench/study_latency.json`` atomically; ``python -m compress.plots`` then uses these figures for
the latency axis and says so in ``results/summary.md``.

``--deployed openvino:fp32`` (or ``openvino:bf16``, ``onnxruntime:fp32``) also exports every final model to
that runtime and times the artefacts round-robin in the same process (``deployed_ms``): the plots then get
a deployed-latency axis (``pareto_deployed_ms_<set>.png``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from compress.results import cpu_model, read_records
from drsformer import DRSformer
from drsformer.io import write_json


@torch.no_grad()
def round_robin_ms(models: dict[str, torch.nn.Module], size: int, repeats: int) -> dict[str, float]:
    """Median ms of one 1x3x``size``x``size`` forward per model, the models interleaved in every round."""
    x = torch.rand(1, 3, size, size)
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(repeats + 1):
        for name, model in models.items():
            start = time.perf_counter()
            model(x)
            if round_:  # round 0 is the warm-up
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def deployed_ms(models: dict, backend: str, size: int, repeats: int, threads: int) -> dict[str, float]:
    """Every model exported to ``backend`` (runtime:precision, with that runtime's forms) and timed round-robin
    like the eager ones."""
    from benchmarks.deploy_latency import deployed_backends

    backend = backend.replace(":", "_")
    with tempfile.TemporaryDirectory() as tmp:
        artefacts = {name: deployed_backends(model, Path(tmp), name, [backend], threads)[backend]
                     for name, model in models.items()}  # fmt: skip
        return round_robin_ms(artefacts, size, repeats)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="holds <stem>/final of every record")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--deployed", choices=["openvino:fp32", "openvino:bf16", "onnxruntime:fp32"],
                        help="also time every model exported to this runtime:precision")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = read_records(args.results / "runs")
    if not records:
        raise SystemExit(f"no run records in {args.results / 'runs'}; run recipes first (python compress/run.py ...)")
    missing = [str(args.runs / r["stem"] / "final") for r in records if not (args.runs / r["stem"] / "final").is_dir()]
    if missing:
        raise SystemExit(f"no final model for {missing}; rerun those recipes or pass --runs <folder holding them>")
    models = {r["stem"]: DRSformer.from_pretrained(args.runs / r["stem"] / "final").eval() for r in records}
    latency = round_robin_ms(models, args.size, args.repeats)
    deployed = deployed_ms(models, args.deployed, args.size, args.repeats, args.threads) if args.deployed else {}
    record = {
        "command": " ".join(["python -m benchmarks.study_latency", *sys.argv[1:]]),
        "machine": f"{cpu_model()}, {args.threads} torch threads, fp32, eval, batch 1, "
        f"{args.size}x{args.size}, median of {args.repeats} round-robin rounds",
        "torch": torch.__version__,
        "latency_ms": latency,
        **({"deployed_backend": args.deployed, "deployed_ms": deployed} if deployed else {}),
    }
    out = args.results / "bench" / "study_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    for name, ms in sorted(latency.items(), key=lambda kv: kv[1]):
        print(f"{name:<32} {ms:8.1f} ms")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

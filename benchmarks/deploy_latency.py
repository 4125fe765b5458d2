"""Deployed latency: teacher and pruned students side by side in one process, on every backend and precision.

    python -m benchmarks.deploy_latency [--teacher results/first_protocol/teacher_tiny | --preset full]
        [--sizes 256 512] [--targets 0.5 0.25] [--repeats 3] [--limit 5] [--out results/bench/deploy_latency.json]
        [--forms] [--int8] [--no-compile]

Models: the teacher (a ``save_pretrained`` folder, or ``--preset`` with seeded random weights), students
pruned from it to each ``--targets`` share of its MACs (head channels, MSFN width, experts, residual width;
L1, untrained: latency does not depend on the weights, and each backend's PSNR is compared with the same
model's eager PSNR), and the official graph (``tests/literal_drsformer.py``, same weights as the teacher).
Backends: eager fp32, eager bf16 autocast, torch.compile (inductor, fp32; ``--no-compile`` skips it: its
first call at each size compiles for minutes), ONNX Runtime fp32, OpenVINO fp32 and bf16 (and int8 with
``--int8``), all on ``--threads`` threads (2). Medians of ``--repeats`` rounds after one warm-up round, every
backend once per round (round-robin, so that the machine's drift hits all alike). PSNR: the
first ``--limit`` Rain100L images with each backend, when ``../shared/data`` is there.

``--forms``: instead, the teacher exported with the model's rewrites in their fast and their official forms
(``drsformer.model.EXPORT_FAST``: all fast, all official, each one alone official), timed in ONNX Runtime and
OpenVINO fp32/bf16 (and int8 with ``--int8``), PSNR on the first ``--limit`` images of Rain100L and Rain100H
(``--out`` default ``results/bench/deploy_forms.json``): which forms each runtime's export uses
(``compress.export.RUNTIME_FORMS``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from compress.evaluate import load_model
from compress.export import EXPORT_SIZE, DeployedModel, export_onnx, export_openvino
from compress.measure import count_macs
from compress.prune import PruneSpec, prune
from compress.results import cpu_model
from drsformer import DRSformer, DRSformerConfig
from drsformer.io import write_json

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


class _Autocast(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float()


def _deployed(args) -> list[str]:
    return ["onnxruntime_fp32", "openvino_fp32", "openvino_bf16"] + (["openvino_int8"] if args.int8 else [])


def median_s(backends: dict, size: int, repeats: int) -> dict:
    """Median seconds of one forward per backend, all interleaved round by round (drift hits each alike)."""
    from benchmarks.study_latency import round_robin_ms

    return {key: ms / 1000 for key, ms in round_robin_ms(backends, size, repeats).items()}


def psnr(model, limit: int, test_set: str = "rain100L") -> float | None:
    if not (SHARED / test_set).is_dir() or limit == 0:
        return None
    from compress.evaluate import evaluate

    return evaluate(model, {test_set: str(SHARED / test_set)}, limit=limit, show=False)[test_set]["psnr_y_db"]


def literal_of(teacher: DRSformer) -> torch.nn.Module:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.literal_drsformer import LiteralDRSformer

    cfg = teacher.config
    uniform = dict(dim=cfg.levels[0].width, num_blocks=[len(lv.blocks) for lv in cfg.levels[:4]],
                   heads=[lv.blocks[0].heads for lv in cfg.levels[:4]], mefc=cfg.mefc)  # fmt: skip
    literal = LiteralDRSformer(**uniform).eval()
    literal.load_state_dict(teacher.state_dict(), strict=True)
    return literal


def best_backends(record: dict, size: str) -> dict[str, tuple[str, float]]:
    """Per model, the fastest backend at ``size`` among those within 0.05 dB (0.1 dB for int8) of its eager fp32
    PSNR (all of them where no PSNR was measured)."""
    def ok(psnrs: dict, backend: str) -> bool:
        ref, value = psnrs.get("eager_fp32"), psnrs.get(backend)
        return ref is None or value is None or value >= ref - (0.1 if backend.endswith("int8") else 0.05)

    best = {}
    for name, times in record["seconds"][size].items():
        psnrs = record.get("psnr_y_db", {}).get(name, {})
        backend = min((b for b in times if ok(psnrs, b)), key=times.get)
        best[name] = (backend, times[backend])
    return best


def markdown(record: dict) -> str:
    """The record's tables: seconds per model and backend at each size, then each backend's PSNR minus eager fp32."""
    lines = []
    for size, models in record["seconds"].items():
        backends = list(next(iter(models.values())))
        lines += ["", f"| {size}x{size}, seconds | " + " | ".join(backends) + " |", "|---" * (len(backends) + 1) + "|"]
        for name, times in models.items():
            gmacs = record["gmacs_256"].get(name)
            label = f"{name} ({gmacs:.2f} GMACs)" if gmacs is not None else name
            lines.append(f"| {label} | " + " | ".join(f"{times[b]:.3f}" for b in backends) + " |")
    psnrs = {name: row for name, row in record.get("psnr_y_db", {}).items() if row.get("eager_fp32") is not None}
    if psnrs:
        backends = [b for b in next(iter(psnrs.values())) if b != "eager_fp32"]
        header = "| PSNR minus eager fp32 (dB) | " + " | ".join(backends) + " |"
        lines += ["", header, "|---" * (len(backends) + 1) + "|"]
        for name, row in psnrs.items():
            cells = ["-" if row.get(b) is None else f"{row[b] - row['eager_fp32']:+.3f}" for b in backends]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines[1:]) + "\n"


def plot(record: dict, out: Path) -> Path:
    """Latency at each size against GMACs: eager fp32 and the best deployed backend of every model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compress.plots import place_labels
    from drsformer.io import atomic_write

    fig, axes = plt.subplots(1, len(record["seconds"]), figsize=(6 * len(record["seconds"]), 4.5), squeeze=False)
    for ax, size in zip(axes[0], record["seconds"]):
        best, labels = best_backends(record, size), []
        for name, times in record["seconds"][size].items():
            gmacs = record["gmacs_256"].get(name, record["gmacs_256"]["teacher"])
            ax.scatter(gmacs, times["eager_fp32"], marker="x", color="grey")
            ax.scatter(gmacs, best[name][1], marker="*" if name == "teacher" else "o", s=80)
            labels.append((gmacs, best[name][1], f"{name}: {best[name][0]}"))
        place_labels(ax, labels)  # no label hides another
        ax.set_xlabel("GMACs at 256x256")
        ax.set_ylabel(f"seconds per {size}x{size} image")
        ax.set_title(f"{size}x{size}: best deployed backend (dots), eager fp32 (x)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    return out


def deployed_backends(model, folder: Path, name: str, backends: list[str], threads: int,
                      size: tuple[int, int] = EXPORT_SIZE, forms: dict | None = None) -> dict:  # fmt: skip
    """``model`` exported into ``folder`` for each of ``backends`` (``onnxruntime_fp32``, ``openvino_fp32``,
    ``openvino_bf16``, ``openvino_int8``) and loaded: ``{backend: DeployedModel}``. Each export takes its
    runtime's forms (``compress.export.RUNTIME_FORMS``) unless ``forms`` is given."""
    from compress.export import calibration_patches

    out = {}
    for backend in backends:
        runtime, precision = backend.split("_")
        if runtime == "onnxruntime":
            path = export_onnx(model, folder / f"{name}.onnx", size, forms)
        else:
            calibration = calibration_patches(None) if precision == "int8" else None
            path = export_openvino(model, folder / f"{name}_{precision}.xml", precision, calibration, size, forms)
        out[backend] = DeployedModel(path, precision, threads=threads)
    return out


def forms(teacher: DRSformer, args) -> dict:
    """Seconds per backend for the teacher exported with each combination of fast and official forms."""
    from compress.export import RUNTIME_FORMS
    from drsformer.model import EXPORT_FAST

    default = dict(EXPORT_FAST)
    candidates = {"all_fast": dict.fromkeys(default, True), "all_official": dict.fromkeys(default, False),
                  **{f"official_{k}_only": {**dict.fromkeys(default, True), k: False} for k in default}}  # fmt: skip
    variants = {}
    for name, setting in candidates.items():  # each distinct setting once, under its first name
        if setting not in variants.values():
            variants[name] = setting
    record = {"forms": variants, "runtime_forms_when_run": RUNTIME_FORMS, "seconds": {}, "psnr_y_db": {}}
    with tempfile.TemporaryDirectory() as tmp:
        backends = {}
        for name, setting in variants.items():
            for backend, deployed in deployed_backends(teacher, Path(tmp), name, _deployed(args), args.threads,
                                                       forms=setting).items():  # fmt: skip
                backends[name, backend] = deployed
            print(f"exported {name}: {setting}", flush=True)
        for size in args.sizes:
            for (name, backend), seconds in median_s(backends, size, args.repeats).items():
                record["seconds"].setdefault(str(size), {}).setdefault(name, {})[backend] = seconds
                print(size, name, backend, f"{seconds:.3f} s", flush=True)
        for (name, backend), model in backends.items():  # both sets: int8's error differs between them
            for test_set in ("rain100L", "rain100H"):
                record["psnr_y_db"].setdefault(test_set, {}).setdefault(name, {})[backend] = psnr(
                    model, args.limit, test_set)  # fmt: skip
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plot-only", type=Path, help="redraw the plot of an existing JSON, print its tables, stop")
    parser.add_argument("--teacher", help="save_pretrained folder (default: --preset with random weights)")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--targets", type=float, nargs="*", default=[0.5, 0.25])
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=5, help="Rain100L images for each backend's PSNR")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--int8", action="store_true", help="also OpenVINO int8 (NNCF, synthetic calibration)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave out torch.compile")
    parser.add_argument("--forms", action="store_true", help="time the teacher's export forms instead (see above)")
    parser.add_argument("--out", type=Path, help="default results/bench/deploy_latency.json (deploy_forms.json)")
    args = parser.parse_args(argv)
    if args.plot_only:
        import json

        record = json.loads(args.plot_only.read_text())
        print(markdown(record))
        print(f"wrote {plot(record, args.plot_only.with_suffix('.png'))}")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = (load_model(args.teacher) if args.teacher else DRSformer(DRSformerConfig.preset(args.preset))).eval()
    command = " ".join(["python -m benchmarks.deploy_latency", *(argv if argv is not None else sys.argv[1:])])
    machine = f"{cpu_model()}, {os.cpu_count()} logical CPUs, {args.threads} threads"
    if args.forms:
        out = args.out or Path("results/bench/deploy_forms.json")
        record = {"command": command, "machine": machine, "teacher": args.teacher or f"random:{args.preset}",
                  "scale": f"medians of {args.repeats} round-robin rounds of one square image after a warm-up "
                           f"round; PSNR on the first {args.limit} Rain100L and Rain100H images",
                  **forms(teacher, args)}  # fmt: skip
        write_json(out, record)
        print(f"wrote {out}")
        return
    args.out = args.out or Path("results/bench/deploy_latency.json")
    models = {"teacher": teacher}
    for target in args.targets:
        spec = PruneSpec(["head_channels", "ffn", "experts", "width"], target_macs=target, max_ratio=0.75)
        models[f"student{round(target * 100)}"] = prune(teacher, spec)[0]
    official = literal_of(teacher)
    record = {
        "command": command,
        "machine": machine,
        "teacher": args.teacher or f"random:{args.preset}",
        "scale": f"medians of {args.repeats} round-robin rounds of one square image after a warm-up round; PSNR "
                 f"on the first {args.limit} Rain100L images; students pruned without training",
        "gmacs_256": {name: count_macs(m.config, 256, 256) / 1e9 for name, m in models.items()},
        "seconds": {}, "psnr_y_db": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        backends = {}
        for name, model in [*models.items(), ("official_graph", official)]:
            backends[(name, "eager_fp32")] = model
            backends[(name, "eager_bf16")] = _Autocast(model)
            if args.compile:  # compiled on its warm-up call at each size (static shapes: one graph per size)
                backends[(name, "torch_compile_fp32")] = torch.compile(model, backend="inductor", dynamic=False)
            size = (64, 64) if name == "official_graph" else EXPORT_SIZE  # the official forward needs multiples of 8
            for backend, deployed in deployed_backends(model, Path(tmp), name, _deployed(args), args.threads,
                                                       size).items():  # fmt: skip
                backends[name, backend] = deployed
            print(f"exported {name}", flush=True)
        for size in args.sizes:  # every backend of every model, round after round, in one process
            for (name, backend), seconds in median_s(backends, size, args.repeats).items():
                record["seconds"].setdefault(str(size), {}).setdefault(name, {})[backend] = seconds
                print(size, name, backend, f"{seconds:.3f} s", flush=True)
            write_json(args.out, record)
        for name, backend in list(backends):  # each one freed after its PSNR (the full model's compiled graphs
            model = backends.pop((name, backend))  # do not all fit in memory at a test image's size)
            if name != "official_graph":  # the official forward needs sizes divisible by 8 (Rain100 is not)
                record["psnr_y_db"].setdefault(name, {})[backend] = psnr(model, args.limit)
            del model
    write_json(args.out, record)
    print(f"wrote {args.out} and {plot(record, args.out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()

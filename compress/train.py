"""``fit()``: the one training loop (Hugging Face Accelerate), teachers and students alike.

The loss is a function ``loss_fn(rainy, derained, clean) -> {term: value}``: L1 to the clean image for a
teacher (``l1_loss``, the official loss), a ``compress.distill.Distiller`` (frozen teacher, feature taps,
adapters) for a student; that is the only difference.
Counting is in steps, as the upstream iteration schedules are; the loader is endless. Resuming is exact:
the (rainy, clean) patches, synthetic rain included, are a pure function of their index
(``compress.data.Patches``), the lr a pure function of the step, and ``accelerator.save_state`` restores
weights, optimizer moments and RNG states. Every trainable tensor (the student, LoRA, the distiller's
adapters) is one prepared module, so under N processes all of their gradients are all-reduced. Inside a step
nothing waits for the device: the loss is read at ``log_every``, and a non-finite loss is remembered on the
device and checked there and before anything is saved.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from rich.progress import TextColumn
from torch import nn

from compress.data import check_writable_folder, training_patches, validation_sets
from compress.console import UserError, progress_bar
from compress.metrics import psnr_y, ssim_y
from drsformer.io import write_json

STATE, BEST, FINAL = "state", "best", "final"  # sub-folders of a run directory
SUMMARY = "summary.json"  # the finished run's TrainSummary
CURVE = "curve.json"  # every validation of the run: [{"step", "seconds", "loss", "val": {set: {psnr_y_db, ssim_y}}}]


@dataclass
class TrainSummary:
    steps: int
    seconds: float  # training time over every session of the run (validation and checkpoints included)
    patches_per_s: float  # this session's
    last_loss: float
    val: dict[str, dict[str, float]] = field(default_factory=dict)  # last validation, per set
    best_psnr_y_db: float | None = None
    best_step: int | None = None
    ranks: int = 1
    rank_weight_sums: list[float] = field(default_factory=list)  # identical across ranks, or training diverged
    rank_weight_digests: list[int] = field(default_factory=list)  # of every trained tensor's bytes: bit-identical?
    rank_first_patch_sums: list[float] = field(default_factory=list)  # different: ranks saw different data
    resumed_from: int = 0
    # [first step, autocast precision ("no": fp32)] per stretch of training: a run resumed on another machine
    # may train on in another precision (train.mixed_precision: auto)
    autocast: list[list] = field(default_factory=list)


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss; nothing from that point on was saved."""


class WithExtras(nn.Module):
    """The model and the loss's own trainable modules (distillation adapters) as one module: prepared
    together, so that DDP broadcasts and all-reduces both. The forward is the model's."""

    def __init__(self, model: nn.Module, extras: nn.Module):
        super().__init__()
        self.model, self.extras = model, extras

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _plain(accelerator: Accelerator, prepared: nn.Module) -> nn.Module:
    """The model inside a prepared (DDP, compiled) module, without its ``WithExtras`` wrapper."""
    model = accelerator.unwrap_model(prepared, keep_torch_compile=False)
    return model.model if isinstance(model, WithExtras) else model


def native_bf16() -> bool:
    """Whether bf16 autocast computes natively on this machine's training device: a CUDA GPU with bf16, or a
    CPU whose oneDNN has bf16 kernels (AVX512-BF16, AMX). Elsewhere, on an AVX2-only CPU, bf16 convolutions and
    matmuls fall back to slow reference kernels."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(supported is not None and supported())


def autocast_precision(requested: str) -> str:
    """The autocast precision a ``train.mixed_precision`` value trains in here (``auto``: bf16 if native)."""
    if requested == "auto":
        return "bf16" if native_bf16() else "no"
    if requested == "bf16" and not native_bf16():
        where = ("a CUDA GPU without bf16 support (before Ampere)" if torch.cuda.is_available() else
                 "a CPU without native bf16 kernels (oneDNN has none here, e.g. AVX2 only)")
        warnings.warn(f"train.mixed_precision: bf16 on {where}: training runs several times slower than in fp32 "
                      "(benchmarks/train_precision.py measures it); set train.mixed_precision to auto or no",
                      stacklevel=2)  # fmt: skip
    return requested


def make_accelerator(cfg, run_dir: Path) -> Accelerator:
    """Accelerator for a recipe's ``TrainConfig``; CPU-only machines run gloo processes (``../shared/INSTALL.md``)."""
    from accelerate.utils import DataLoaderConfiguration, TorchDynamoPlugin

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dynamo = TorchDynamoPlugin(**cfg.compile_options()) if cfg.compile else None
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=autocast_precision(cfg.mixed_precision),
        gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard" if cfg.tensorboard else None,
        project_dir=str(run_dir),
        dynamo_plugin=dynamo,
        # batches come from pinned memory and are copied without waiting (no effect on the CPU)
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
    )


def lr_at(cfg, step: int) -> float:
    """Official schedule: ``lr`` held ``lr_hold_steps``, then cosine-annealed to ``lr_min`` by ``steps``."""
    if step < cfg.lr_hold_steps:
        return cfg.lr
    span = max(1, cfg.steps - cfg.lr_hold_steps)
    t = min(1.0, (step - cfg.lr_hold_steps) / span)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * t))


@torch.no_grad()
def validate(model: nn.Module, sets: dict[str, tuple[torch.Tensor, torch.Tensor]], device) -> dict[str, dict]:
    """PSNR/SSIM (Y) per validation set; every process computes the same numbers (no communication). In
    fp32 also under ``mixed_precision``: the class's own forward, not the autocast one that accelerate's
    ``prepare`` puts on the instance, so a curve's points compare across precisions and with the records."""
    was_training = model.training
    model.eval()
    forward = type(model).forward
    out = {}
    for name, (rainy, clean) in sets.items():
        derained = torch.cat([forward(model, rainy[i : i + 1].to(device)).float().cpu() for i in range(len(rainy))])
        out[name] = {
            "psnr_y_db": psnr_y(derained, clean).mean().item(),
            "ssim_y": ssim_y(derained, clean).mean().item(),
        }
    model.train(was_training)
    return out


def _loader(dataset, batch_size: int, workers: int):
    if dataset is None or batch_size == 0:
        return None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace the folder ``final`` by ``tmp`` so that one complete copy exists at every moment."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ run directories
DEFINING = ("seed", "model", "teacher", "prune", "student_init", "lora", "data")  # a resumed run keeps these
LOCK = ".lock"
_held_locks: dict[Path, int] = {}


class RunDirError(UserError):
    """A run directory that this run may not use (not writable, in use, or holding another run)."""


def claim_run_dir(run_dir: Path, recipe, *, resume: bool, overwrite: bool, main_process: bool = True) -> None:
    """Check and take ``run_dir`` before any work: writable, not in use by another process (a lock file with the
    holder's PID, released when the process ends, even by kill -9), and holding no run unless ``resume``
    (continue it; the recipe may not change what defines the model or the data) or ``overwrite`` (replace it)."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; pick one")
    if main_process:
        check_writable_folder(run_dir, "the run folder (out_dir)")
        _lock(run_dir)
    state, final = latest_state(run_dir), run_dir / FINAL
    if state is None and not final.exists():
        return
    if overwrite:
        if main_process:
            for name in (STATE, STATE + ".old", STATE + ".tmp", BEST, FINAL):
                shutil.rmtree(run_dir / name, ignore_errors=True)
            for name in (CURVE, SUMMARY):
                (run_dir / name).unlink(missing_ok=True)
        return
    progress = read_progress(state) if state else {}
    where = ("finished" if final.exists() else "stopped") + (f" at step {progress['step']}" if progress else "")
    if not resume:
        raise RunDirError(f"{run_dir} already holds a run of this recipe ({where}); continue it with --resume or "
                          "replace it with --overwrite (or set out_dir / seed for a new one)")  # fmt: skip
    if state is not None:
        saved = progress.get("recipe")
        changed = _changed_keys(saved, recipe) if saved else []
        if changed:
            raise RunDirError(f"{run_dir}: --resume with a recipe that changes what defines the model or the data: "
                              + ", ".join(changed[:12]) + "; undo the change, or start again with --overwrite")


def release_run_dir(run_dir: Path) -> None:
    fd = _held_locks.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)


def _lock(run_dir: Path) -> None:
    import fcntl

    key = run_dir.resolve()
    if key in _held_locks:
        return
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunDirError(f"{run_dir} is in use by process {holder} (another run of this recipe); wait for it to end "
                          "or give this run another out_dir or seed") from None  # fmt: skip
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held_locks[key] = fd


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return out


def _changed_keys(saved: dict, recipe) -> list[str]:
    """Keys under ``DEFINING`` whose value differs between a saved recipe dump and ``recipe`` (fields the
    saved dump predates count at their defaults)."""
    from pydantic import ValidationError

    try:
        saved = type(recipe).model_validate(saved).model_dump(mode="json")
    except ValidationError:
        pass  # a recipe from another schema: compare what is there
    now = recipe.model_dump(mode="json")
    old_flat, new_flat = _flat({k: saved.get(k) for k in DEFINING}), _flat({k: now.get(k) for k in DEFINING})
    return sorted(k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k))


def append_curve(run_dir: Path, point: dict) -> None:
    """Add one validation to ``run_dir/curve.json``; points at or after its step (from a run that was
    interrupted after them and resumed from an earlier state) are replaced, so a resumed curve has no repeats."""
    path = Path(run_dir) / CURVE
    points = json.loads(path.read_text()) if path.is_file() else []
    points = [p for p in points if p["step"] < point["step"]] + [point]
    write_json(path, points)


def save_state(accelerator: Accelerator, run_dir: Path, info: dict) -> None:
    """Weights, optimizer, RNG (``accelerator.save_state``) and ``info`` (step, best, seconds, recipe) into
    ``run_dir/state``: written to ``state.tmp`` and swapped in, so one complete state exists at every moment."""
    tmp = Path(run_dir) / (STATE + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps(info, indent=1))
        _swap_in(tmp, Path(run_dir) / STATE)
    accelerator.wait_for_everyone()


def load_state(accelerator: Accelerator, run_dir: Path) -> dict | None:
    """Restore the newest complete state of ``run_dir`` into the prepared objects; its ``info``, or None."""
    state = latest_state(Path(run_dir))
    if state is None:
        return None
    accelerator.load_state(str(state))
    return read_progress(state)


def read_progress(state: Path) -> dict:
    """A saved state's ``progress.json``: its step, best validation, seconds so far and recipe."""
    return json.loads((state / "progress.json").read_text())


def latest_state(run_dir: Path) -> Path | None:
    """The newest complete training state of a run (``state``, or ``state.old`` if a swap was interrupted)."""
    for name in (STATE, STATE + ".old"):
        if (run_dir / name / "progress.json").is_file():
            return run_dir / name
    return None


def l1_loss(rainy: torch.Tensor, derained: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official loss: L1 between the output and the clean image."""
    return {"l1": F.l1_loss(derained.float(), clean)}


def fit(
    model: nn.Module,
    loss_fn,
    cfg,
    data,
    accelerator: Accelerator,
    run_dir: Path,
    *,
    real_fraction: float = 0.0,
    val_sets: dict | None = None,
    workers: int = 0,
    resume: bool = False,
    recipe: dict | None = None,
    show: bool = True,
) -> TrainSummary:
    """Train ``model`` for ``cfg.steps`` optimizer steps (``cfg``: a recipe's ``TrainConfig``).

    ``data`` is ``(pairs, real_rain_patches | None)`` from ``compress.data.training_patches``.
    ``loss_fn(rainy, derained, clean)`` returns the loss terms (summed); ``clean`` covers the first
    ``len(clean)`` images of the batch. Real-rain patches (no ground truth) join each batch only for a loss
    with ``learns_unlabelled`` (a distiller); a loss with ``trainable_module()`` trains that module too and
    ``prepare(accelerator)`` readies its own parts. Writes ``run_dir/state`` every ``save_every`` steps and
    at the end, ``run_dir/best`` (best mean validation PSNR) and ``run_dir/final``: plain ``DRSformer``
    folders (``save_pretrained``; LoRA merged by ``export_model``).
    """
    run_dir = Path(run_dir)
    world, device = accelerator.num_processes, accelerator.device
    per_process, rest = divmod(cfg.batch_size, world * cfg.grad_accum)
    if rest or per_process == 0:
        raise ValueError(
            f"train.batch_size ({cfg.batch_size}) is not a multiple of processes x grad_accum"
            f" ({world} x {cfg.grad_accum})"
        )
    unlabelled = getattr(loss_fn, "learns_unlabelled", False)
    n_real = max(1, round(per_process * real_fraction)) if real_fraction > 0 and unlabelled else 0
    if n_real >= per_process:
        raise ValueError(f"data.real_rain_fraction leaves no synthetic patch in a batch of {per_process} per process")
    clean_patches, real_patches = data
    extras = loss_fn.trainable_module() if hasattr(loss_fn, "trainable_module") else None
    if extras is not None and len(list(extras.parameters())):
        model = WithExtras(model, extras)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        betas=cfg.betas,
        weight_decay=cfg.weight_decay,
    )
    loaders = [_loader(clean_patches, per_process - n_real, workers), _loader(real_patches, n_real, workers)]
    model, optimizer = accelerator.prepare(model, optimizer)
    loaders = [accelerator.prepare(loader) if loader is not None else None for loader in loaders]
    if hasattr(loss_fn, "prepare"):
        loss_fn.prepare(accelerator)

    start, best, earlier_seconds = 0, {"psnr": None, "step": None}, 0.0
    progress_info = load_state(accelerator, run_dir) if resume else None
    if progress_info is not None:
        start, best = progress_info["step"], progress_info["best"]
        earlier_seconds = progress_info.get("train_seconds", 0.0)  # states from before this field: unknown, 0
        accelerator.print(f"resumed {run_dir} at step {start}")
    autocast = list(progress_info.get("autocast", [])) if progress_info is not None else []
    if start < cfg.steps and (not autocast or autocast[-1][1] != accelerator.mixed_precision):
        autocast.append([start, accelerator.mixed_precision])
    micro_batches = start * cfg.grad_accum
    iters = [
        iter(accelerator.skip_first_batches(loader, micro_batches) if micro_batches else loader) if loader else None
        for loader in loaders
    ]
    if cfg.tensorboard:
        accelerator.init_trackers(run_dir.name)

    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss

    def check_finite() -> None:
        bad = int(first_bad)  # the one place that waits for the device
        if bad >= 0:
            raise NonFiniteLoss(
                f"step {bad + 1}: the loss is not finite (last terms: "
                + ", ".join(f"{k} {v.item():.4g}" for k, v in terms.items())
                + f"); nothing from this step on was saved. Lower train.lr (now {cfg.lr:g}) or set train.grad_clip "
                f"(now {cfg.grad_clip}); --resume restarts from the last state in {run_dir / STATE}"
            )

    first_patch_sum, last_loss, val = None, float("nan"), {}
    started = time.perf_counter()
    stats = TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[pps]:.1f} patches/s")
    progress = progress_bar(stats, enabled=accelerator.is_main_process and show)
    task = progress.add_task("train", total=cfg.steps, completed=start, loss=float("nan"), lr=cfg.lr, pps=0.0)
    model.train()
    with progress:
        for step in range(start, cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            for _ in range(cfg.grad_accum):
                batch = next(iters[0])
                rainy, clean = batch["rainy"], batch["clean"]
                if first_patch_sum is None:
                    first_patch_sum = clean.double().sum().item()
                if iters[1] is not None:
                    rainy = torch.cat([rainy, next(iters[1])["rainy"]])
                with accelerator.accumulate(model):
                    derained = model(rainy)
                    terms = loss_fn(rainy, derained, clean)
                    loss = sum(terms.values())
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.grad_clip is not None:
                        accelerator.clip_grad_norm_(
                            [p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip
                        )
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
            done = step + 1
            if device.type == "cpu":
                check_finite()  # free on the CPU: stop at the very step
            patches_per_s = (done - start) * cfg.batch_size / (time.perf_counter() - started)
            progress.update(task, completed=done, lr=optimizer.param_groups[0]["lr"], pps=patches_per_s)
            if done % cfg.log_every == 0 or done == cfg.steps:
                check_finite()
                last_loss = loss.item()
                progress.update(task, loss=last_loss)
                logged = {
                    "loss": last_loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    **{k: v.item() for k, v in terms.items()},
                }
                if cfg.tensorboard:
                    accelerator.log(logged, step=done)
                if show and not progress.console.is_terminal:  # a log file gets one line per log_every
                    accelerator.print(f"step {done}/{cfg.steps} " + " ".join(f"{k} {v:.4g}" for k, v in logged.items())
                                      + f" {patches_per_s:.2f} patches/s")  # fmt: skip
            if val_sets and (done % cfg.eval_every == 0 or done == cfg.steps):
                check_finite()
                last_loss = loss.item()  # the curve's loss is this step's, also off the log_every grid
                val = validate(_plain(accelerator, model), val_sets, device)
                mean_psnr = sum(v["psnr_y_db"] for v in val.values()) / len(val)
                if cfg.tensorboard:
                    accelerator.log({f"val/{k}/psnr_y_db": v["psnr_y_db"] for k, v in val.items()}, step=done)
                if accelerator.is_main_process:
                    seconds_so_far = earlier_seconds + time.perf_counter() - started
                    append_curve(run_dir, {"step": done, "seconds": seconds_so_far, "loss": last_loss, "val": val})
                if best["psnr"] is None or mean_psnr > best["psnr"]:
                    best = {"psnr": mean_psnr, "step": done}
                    if accelerator.is_main_process:
                        export_model(_plain(accelerator, model), run_dir / BEST)
                progress.console.print(
                    f"step {done}: loss {last_loss:.4f}  "
                    + "  ".join(f"{k} {v['psnr_y_db']:.2f} dB" for k, v in val.items())
                )
            if done % cfg.save_every == 0 or done == cfg.steps:
                check_finite()
                seconds_so_far = earlier_seconds + time.perf_counter() - started
                save_state(accelerator, run_dir, {"step": done, "best": best, "train_seconds": seconds_so_far,
                                                  "autocast": autocast, "recipe": recipe})  # fmt: skip
    seconds = time.perf_counter() - started
    check_finite()
    if accelerator.is_main_process:
        export_model(_plain(accelerator, model), run_dir / FINAL)
    if cfg.tensorboard:
        accelerator.end_training()
    trained = accelerator.unwrap_model(model, keep_torch_compile=False)  # with the adapters and LoRA
    checks = torch.tensor(
        [sum(p.double().sum().item() for p in _plain(accelerator, model).parameters()), first_patch_sum or 0.0],
        dtype=torch.float64,
        device=device,
    )
    digest = torch.tensor([_digest(trained)], dtype=torch.long, device=device)
    gathered = accelerator.gather(checks[None]).view(-1, 2).cpu()
    digests = accelerator.gather(digest).cpu().tolist()
    return TrainSummary(
        steps=cfg.steps,
        seconds=earlier_seconds + seconds,  # over all sessions of a resumed run
        patches_per_s=(cfg.steps - start) * cfg.batch_size / seconds if start < cfg.steps else float("nan"),
        last_loss=last_loss,
        val=val,
        best_psnr_y_db=best["psnr"],
        best_step=best["step"],
        ranks=world,
        rank_weight_sums=gathered[:, 0].tolist(),
        rank_weight_digests=digests,
        rank_first_patch_sums=gathered[:, 1].tolist(),
        resumed_from=start,
        autocast=autocast,
    )


def _digest(model: nn.Module) -> int:
    """A 62-bit digest of every parameter's name and bytes: equal on two ranks only if bit-identical."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return int(h.hexdigest()[:15], 16)


def export_model(model: nn.Module, out: Path) -> None:
    """The deliverable: a plain ``DRSformer`` in ``out`` (``save_pretrained``), LoRA adapters merged in."""
    from compress.distill import merge_lora

    merge_lora(model).save_pretrained(out)


def write_summary(summary: TrainSummary, path: Path) -> None:
    write_json(path, asdict(summary))


def finished_summary(run_dir: Path, steps: int) -> TrainSummary | None:
    """The saved summary of a run that has trained all ``steps`` and exported ``final/``, else None."""
    run_dir = Path(run_dir)
    state, summary = latest_state(run_dir), run_dir / SUMMARY
    if state is None or not (run_dir / FINAL).is_dir() or not summary.is_file():
        return None
    if read_progress(state)["step"] < steps:
        return None
    saved = json.loads(summary.read_text())
    return TrainSummary(**saved) if saved.get("steps") == steps else None


def fit_recipe(model: nn.Module, recipe, accelerator: Accelerator, *, loss_fn=l1_loss, resume: bool = False,
               show: bool = True) -> TrainSummary:  # fmt: skip
    """``fit()`` with everything a recipe sets (data, rain, validation, seed, run directory); the main
    process writes ``<run dir>/summary.json``. The caller has claimed the run directory (``claim_run_dir``).
    Resuming a run that has finished (its state at the last step, ``final/`` and ``summary.json`` written)
    trains nothing and returns the saved summary: a study script may resume every run it needs."""
    done = finished_summary(recipe.run_dir, recipe.train.steps) if resume else None
    if done is not None:
        accelerator.print(f"{recipe.run_dir} finished its {done.steps} steps; nothing to resume")
        return done
    summary = fit(
        model,
        loss_fn,
        recipe.train,
        training_patches(recipe.data, recipe.seed),
        accelerator,
        recipe.run_dir,
        real_fraction=recipe.data.real_rain_fraction,
        val_sets=validation_sets(recipe.data),
        workers=recipe.data.workers,
        resume=resume,
        recipe=recipe.model_dump(mode="json"),
        show=show,
    )
    if accelerator.is_main_process:
        write_summary(summary, recipe.run_dir / SUMMARY)
    return summary

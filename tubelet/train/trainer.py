"""The one training loop (DiT or VAE, one process or many under torchrun).

    run = train(cfg, data_dir, run_dir, resume=True)

Why it looks the way it does:
- The learning rate is a pure function of the step (no scheduler object): resuming is exact
  and the schedule is visible in one place.
- Every source of randomness that shapes a step (noise, timesteps, caption dropout, task mix)
  comes from one seeded `torch.Generator` that is checkpointed, plus the data position; so a
  run killed at any point and resumed ends with the same weights as an uninterrupted one
  (same world size, num_workers 0 or deterministic workers).
- The data's per-sample choices (caption, start frame, replacement of an unreadable file) are
  functions of (seed, epoch, sample index) (`tubelet.data.dataset.SampleKey`), never of a
  process's RNG; with the global batch split in order over the ranks, N processes with batch B
  train on exactly the samples of one process with batch N x B.
- A non-finite loss or gradient skips the step on every rank (the decision is all-reduced) and
  is counted; `max_bad_steps` in a row stop the run with the last good checkpoint intact.
- Checkpoints hold gathered full state dicts, so DDP, FSDP2 and single-process runs read each
  other's checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tubelet.config import config_to_dict
from tubelet.core.files import atomic_write_json, check_output_location
from tubelet.data.loader import Batch
from tubelet.errors import TrainingError, TubeletError
from tubelet.train import checkpoint as ckpt
from tubelet.train.config import TrainConfig
from tubelet.train.ema import EMA
from tubelet.train.parallel import DistInfo, all_reduce_mean, apply_parallelism, init_distributed
from tubelet.train.tasks import build_task

log = logging.getLogger("tubelet.train")


@dataclass
class RunResult:
    run_dir: Path
    step: int
    model_dir: Path | None
    bad_steps: int
    skipped_files: int


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then the schedule."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    progress = (step - o.warmup_steps) / max(1, cfg.max_steps - o.warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if o.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - progress
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * factor)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return None if cfg.precision == "auto" else torch.bfloat16
    if device.type in ("cuda", "cpu") or cfg.precision == "bf16":
        return torch.bfloat16
    return None


class _Batches:
    """Endless iterator over the loader's epochs, with the loader's exact position as state."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self._it: Iterator[Batch] | None = None

    def __next__(self) -> Batch:
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._it = None


def build_batches(
    cfg: TrainConfig, data_dir: Path | None, info: DistInfo, progress: bool = True
) -> tuple[Any, Any]:
    """The data source: a latent cache (`cfg.cache`) or a folder of videos."""
    from tubelet.data.dataset import BucketBatchSampler, VideoDataset, make_loader

    where = cfg.cache or data_dir
    if cfg.cache:
        from tubelet.data.cache import LatentCacheDataset

        ds: Any = LatentCacheDataset(cfg.cache, cfg.data)
        sampler = BucketBatchSampler(
            ds.bucket_ids(), [b.batch_size for b in cfg.data.bucket_list], seed=cfg.seed,
            rank=info.rank, world_size=info.world_size,
        )  # fmt: skip
        source: Any = _CacheBatches(ds, sampler)
    else:
        if data_dir is None:
            raise TubeletError("no training data: give --data DIR (or `cache:` in the config)")
        ds = VideoDataset(data_dir, cfg.data, progress=progress and info.is_main)
        sampler = BucketBatchSampler(ds, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
        source = _Batches(make_loader(ds, sampler))
    if len(ds) == 0:
        raise TubeletError(f"{where}: no usable training samples (run `tubelet data check`)")
    if len(sampler) == 0:
        raise TubeletError(
            f"{where}: {len(ds)} samples are fewer than one batch of any bucket "
            f"({[(b.frames, b.height, b.width, b.batch_size) for b in cfg.data.bucket_list]} x {info.world_size} ranks)"
        )
    return source, ds


class _CacheBatches:
    """Endless batches from an in-memory latent cache (no workers needed, so no prefetch)."""

    _it: Iterator[list[Any]] | None  # the sampler's keyed batches (lists of SampleKey)

    def __init__(self, ds: Any, sampler: Any) -> None:
        self.ds, self.sampler, self._it = ds, sampler, None

    def __next__(self) -> Batch:
        from tubelet.data.cache import collate_latents

        while True:
            if self._it is None:
                self._it = self.sampler.keyed_batches()
            try:
                return collate_latents([self.ds[key] for key in next(self._it)])
            except StopIteration:
                self._it = None

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self._it = None


@contextlib.contextmanager
def _no_grad_sync(model: nn.Module, active: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (DDP no_sync / FSDP2 flag)."""
    m: Any = model  # DDP (`no_sync`) or an FSDP2 module (`set_requires_gradient_sync`)
    if not active:
        yield
    elif hasattr(m, "no_sync"):
        with m.no_sync():
            yield
    elif hasattr(m, "set_requires_gradient_sync"):
        m.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            m.set_requires_gradient_sync(True)
    else:
        yield


class _Stop(Exception):
    """Raised inside the loop to save a checkpoint and stop (see `_StopSignal`)."""


class _StopSignal:
    """SIGINT (Ctrl-C) and SIGTERM (e.g. a scheduler's pre-emption) ask the run to stop cleanly: the
    step in flight finishes, a checkpoint is saved and training stops (resume with --resume). A second
    signal aborts at once. Handlers are only installed from the main thread. Ranks agree on the step
    to stop at through the all-reduce every step already makes."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning(
            "%s received: finishing this step, saving a checkpoint, then stopping (send it again to abort)",
            signal.Signals(signum).name,
        )


def _metrics_writer(run: Path, info: DistInfo):
    if not info.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(run / "tensorboard"))
    except Exception:  # tensorboard is optional
        log.info("tensorboard is not installed: metrics go to metrics.jsonl only")
        return None


def train(
    cfg: TrainConfig,
    data_dir: str | Path | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> RunResult:
    """Train `cfg` on `data_dir` into `run_dir` (see the module docstring)."""
    run = Path(run_dir)
    info = init_distributed(cfg.device)
    device = info.device
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (FSDP shards them as they are)
    gen_device = device if cfg.rng_device == "auto" and device.type == "cuda" else torch.device("cpu")
    # the same stream on every rank (see DiTTask.loss)
    generator = torch.Generator(device=gen_device).manual_seed(cfg.seed * 7919)

    if info.is_main:
        check_output_location(run, kind="folder", what="run directory")
        existing = ckpt.list_checkpoints(run)
        if existing and not resume:
            raise TubeletError(
                f"{run} already has checkpoints; pass --resume to continue it or choose a new --out"
            )

    task = build_task(cfg, device, info.rank, info.world_size)
    model = task.model
    model.train()
    # An unsharded twin on the meta device: samples and the exported model are built from it
    # and the gathered weights, whatever the wrapper (DDP, FSDP2) did to `model`.
    eval_twin = copy.deepcopy(model).to("meta")
    wrapped = apply_parallelism(
        model, info, mode=cfg.parallel, compile=cfg.compile,
        activation_checkpointing=cfg.grad_checkpointing, submodules=task.submodules(),
        param_dtype=autocast_dtype(cfg, device) if cfg.parallel == "fsdp" else None,
    )  # fmt: skip
    ema = EMA(wrapped, cfg.ema_decay) if cfg.ema_decay else None  # after sharding: same placements
    params = [p for p in wrapped.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optim = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
    )
    batches, dataset = build_batches(cfg, Path(data_dir) if data_dir else None, info, progress)
    if info.is_main:  # only now, with the model and the data in hand: a failed start leaves nothing
        run.mkdir(parents=True, exist_ok=True)
        (run / "samples").mkdir(exist_ok=True)
    # A per-rank stream for whatever still draws from the global RNG (e.g. VAE dropout). The data's
    # per-sample draws do not: they are functions of (seed, epoch, sample index), see SampleKey.
    torch.manual_seed(cfg.seed * 1_000_003 + info.rank)

    step, bad_total = 0, 0
    restored = (
        ckpt.load_latest_checkpoint(run, info=info, model=wrapped, optim=optim, generator=generator, ema=ema)
        if resume
        else None
    )
    if restored is not None:
        last, state = restored
        step, bad_total = int(state["step"]), int(state.get("bad_steps", 0))
        try:
            batches.load_state_dict(state["data"])
        except (KeyError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(
                f"{last / 'trainer.json'}: the data position cannot be restored ({e}); remove this step folder "
                "to resume from the one before it"
            ) from None
        if info.is_main:
            log.info("resumed from %s at step %d", last, step)
    if info.is_main:  # after the restore: a refused resume leaves the run's config as it was
        atomic_write_json(run / "config.json", config_to_dict(cfg), indent=1)

    # trainable state written per checkpoint: fp32 weights, AdamW's two moments, the EMA copy
    trainable = sum(p.numel() * p.element_size() for p in params)
    sharded = trainable * (4 if ema is not None else 3) > cfg.sharded_checkpoint_mb * 2**20

    def save(at: int) -> None:
        state = {
            "step": at,
            "data": batches.state_dict(),
            "bad_steps": bad_total,
            "ema_updates": ema.num_updates if ema is not None else 0,
            "config": config_to_dict(cfg),
        }
        ckpt.save_checkpoint(
            run, at, info=info, model=wrapped, optim=optim, ema=ema, trainer_state=state,
            generator=generator, keep_last=cfg.keep_last, sharded=sharded,
        )  # fmt: skip

    amp = autocast_dtype(cfg, device)
    if cfg.memory_check == "on" or (cfg.memory_check == "auto" and device.type == "cuda"):
        _check_buckets(cfg, task, wrapped, batches, params, amp, device, gen_device)
    writer = _metrics_writer(run, info)
    metrics = open(run / "metrics.jsonl", "a", encoding="utf-8") if info.is_main else None
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {task.name}", dynamic_ncols=True)
    bad_run, window_t, window_samples, window_tokens = 0, time.perf_counter(), 0, 0
    stopper = _StopSignal().install()
    try:
        while step < cfg.max_steps:
            lr = lr_at(step, cfg)
            for group in optim.param_groups:
                group["lr"] = lr
            total = torch.zeros((), device=device)
            extra: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                try:
                    batch = next(batches)
                except Exception:
                    if stopper.requested:  # e.g. the data workers got the same Ctrl-C
                        raise _Stop from None
                    raise
                with _no_grad_sync(wrapped, micro < cfg.grad_accum - 1):
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        loss, stats = task.loss(wrapped, batch, generator)
                    (loss / cfg.grad_accum).backward()
                total += loss.detach().float() / cfg.grad_accum
                window_samples += stats["samples"] * info.world_size
                window_tokens += stats["tokens"] * info.world_size
                for k in ("rec", "kl"):
                    if k in stats:
                        extra[k] = float(stats[k])
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")  # 0: no clipping
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
                grad_norm = grad_norm.full_tensor()
            finite = torch.isfinite(total) & torch.isfinite(grad_norm.to(device))
            stop = stopper.requested
            if (
                info.distributed
            ):  # one collective agrees on both: any rank's NaN skips, any rank's signal stops
                flags = torch.stack([(~finite).float(), torch.tensor(float(stop), device=device)])
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
                finite, stop = flags[0] == 0, bool(flags[1] > 0)
            if not bool(finite):
                optim.zero_grad(set_to_none=True)
                bad_run += 1
                bad_total += 1
                log.warning("step %d: non-finite loss or gradient (%d in a row); step skipped", step, bad_run)
                if bad_run >= cfg.max_bad_steps:
                    last_good = ckpt.latest_checkpoint(run)
                    raise TrainingError(
                        f"loss was NaN/inf for {bad_run} steps in a row at step {step}; stopping. "
                        f"Last good checkpoint: {last_good or 'none yet'}. Try a lower optim.lr or fp32."
                    )
                continue
            bad_run = 0
            optim.step()
            optim.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(wrapped)
            step += 1

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                loss_v = all_reduce_mean(float(total), info)
                dt = max(time.perf_counter() - window_t, 1e-9)
                rec = {
                    "step": step,
                    "loss": loss_v,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "samples_per_s": window_samples / dt,
                    "tokens_per_s": window_tokens / dt,
                    "bad_steps": bad_total,
                    **extra,
                }
                window_t, window_samples, window_tokens = time.perf_counter(), 0, 0
                if metrics is not None:
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                if writer is not None:
                    for k, v in rec.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{lr:.2e}", sps=f"{rec['samples_per_s']:.1f}")
            if bar is not None:
                bar.update(1)
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                save(step)
            if cfg.samples.every and step % cfg.samples.every == 0:
                _samples(task, _eval_model(eval_twin, wrapped, ema, info), run, step)
            if stop and step < cfg.max_steps:
                raise _Stop
        save(step)
        model_dir = None
        final = _eval_model(eval_twin, wrapped, ema, info)
        if final is not None:
            _samples(task, final, run, step)
            model_dir = _export(task, final, run, batches)
        if info.distributed:  # the other ranks wait for rank 0's export before tearing the group down
            torch.distributed.barrier()
    except _Stop:  # a SIGINT/SIGTERM: the step in flight has finished
        save(step)
        raise TrainingError(
            f"stopped by a signal at step {step}; checkpoint saved in {run}. Continue with --resume."
        ) from None
    finally:
        stopper.uninstall()
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
        if writer is not None:
            writer.close()
    skipped = dataset.stats().get("skipped_unreadable", 0) if hasattr(dataset, "stats") else 0
    if isinstance(skipped, (list, dict)):
        skipped = len(skipped)
    if info.is_main and skipped:
        log.warning("%d unreadable file(s) were skipped during training", skipped)
    return RunResult(run, step, model_dir, bad_total, int(skipped))


def _check_buckets(
    cfg: TrainConfig, task: Any, wrapped: nn.Module, batches: Any, params: list[nn.Parameter],
    amp: torch.dtype | None, device: torch.device, gen_device: torch.device,
) -> None:  # fmt: skip
    """One trial step per bucket (train/memprobe.py); the data position and every RNG left as they were."""
    from tubelet.train.memprobe import probe_buckets, synthetic_batch

    position = batches.state_dict()
    template = next(batches)  # a real batch: its captions / text embeddings, its tensor kinds
    batches.load_state_dict(position)

    def trial(batch: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss, _ = task.loss(wrapped, batch, gen)
        return loss

    def local(p: torch.Tensor) -> int:  # an FSDP2 parameter holds its shard only
        t = p.to_local() if hasattr(p, "to_local") else p
        return t.numel() * t.element_size()

    with _no_grad_sync(wrapped, True):
        probe_buckets(
            trial, wrapped, cfg.data.bucket_list, lambda b: synthetic_batch(template, b, getattr(task, "codec", None)), device,
            optimizer_bytes=2 * sum(local(p) for p in params), generator_device=gen_device,
        )  # fmt: skip


def _eval_model(twin: nn.Module, wrapped: nn.Module, ema: EMA | None, info: DistInfo) -> nn.Module | None:
    """Rank 0 gets a plain model with the (EMA) weights; every rank must call this (gathering is collective)."""
    state = ckpt.gather_model_state(wrapped)
    if ema is not None:
        state.update(ema.state_dict())
    if not info.is_main:
        return None
    model = copy.deepcopy(twin).to_empty(device=info.device)
    model.load_state_dict({k: v.to(info.device) for k, v in state.items()})
    return model.eval()


def _samples(task: Any, model: nn.Module | None, run: Path, step: int) -> None:
    if model is None:
        return
    try:
        with torch.no_grad():
            task.write_samples(model, run / "samples", step)
    except TubeletError:
        raise
    except Exception as e:  # samples are for people watching the run; never kill training for them
        log.warning("could not write samples at step %d: %s", step, e)


def _export(task: Any, model: nn.Module, run: Path, batches: Any) -> Path:
    out = run / "model"
    if task.name == "vae":
        stats_batches = [next(batches)["video"] for _ in range(4)]
        task.export(model, out, stats_batches)
    else:
        task.export(model, out)
    return out


def export_checkpoint(
    run_dir: str | Path,
    out: str | Path,
    *,
    step: int | None = None,
    use_ema: bool = True,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a model directory from a DiT run's checkpoint (the latest, or `step`) without training.

    Uses the run's own `config.json` to rebuild the model, loads the checkpoint's EMA weights (or the
    raw weights with `use_ema=False`), optionally casts them to `dtype` (e.g. torch.float16 to halve
    the size of a shipped model), and exports exactly what the end of the run would have exported.
    """
    from tubelet.config import config_from_dict
    from tubelet.core.parsing import read_json
    from tubelet.errors import ModelLoadError
    from tubelet.train.config import TrainConfig

    run = Path(run_dir)
    cfg_file = run / "config.json"
    if not run.is_dir():
        raise TubeletError(f"{run}: not a training run (directory not found)")
    if not cfg_file.is_file():
        raise TubeletError(f"{run}: not a training run (no config.json)")
    raw = read_json(cfg_file, error=TubeletError, what="run config")
    cfg = config_from_dict(TrainConfig, raw, where=str(cfg_file))
    if cfg.task != "dit":
        raise TubeletError(
            f"{run}: exporting a {cfg.task!r} checkpoint is not supported (a VAE export needs data for its "
            "latent statistics: resume the run with --max-steps at the step you want instead)"
        )
    check_output_location(out, kind="folder", what="model directory")
    found = ckpt.list_checkpoints(run)
    if not found:
        raise TubeletError(f"{run}: no checkpoints under {run / 'checkpoints'}")
    if step is None:
        candidates = list(reversed(found))  # the newest intact one
    else:
        path = ckpt.step_dir(run, step)
        if not path.is_dir():
            have = ", ".join(str(int(p.name.split("-")[1])) for p in found)
            raise TubeletError(f"{run}: no checkpoint at step {step} (have: {have})")
        candidates = [path]
    task = build_task(cfg, torch.device("cpu"))
    model: Any = task.model  # DiTTask's TextToVideoModel or VAETask's VAE: what its `export` takes
    problems: list[str] = []
    for path in candidates:
        try:
            if ckpt.is_sharded(path):
                state = ckpt.read_sharded_weights(path, model, use_ema=use_ema and cfg.ema_decay is not None)
                if use_ema and cfg.ema_decay is None:
                    raise TubeletError(
                        f"{path}: has no EMA weights (ema_decay was 0); pass use_ema=False / --no-ema"
                    )
            else:
                state = _read_full_weights(path, use_ema)
            expected = model.state_dict()
            bad = [
                k for k, v in state.items() if k not in expected or tuple(v.shape) != tuple(expected[k].shape)
            ]
            # frozen parameters (a box adapter's or a LoRA run's base) are not in checkpoints: the
            # task rebuilt them from the run's config (init_from)
            frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
            missing = sorted(set(expected) - set(state) - frozen)
            if bad or missing:
                raise ckpt.CheckpointError(
                    f"{path / 'model.safetensors'}: does not match the run's model (unexpected or mis-shaped "
                    f"{bad[:3]}, missing {missing[:3]})"
                )
        except (ModelLoadError, ckpt.CheckpointError) as e:
            problems.append(str(e))
            log.warning("checkpoint %s cannot be exported: %s", path.name, e)
            continue
        if problems:
            log.warning("exporting %s instead (the newer one is damaged)", path.name)
        break
    else:
        raise ckpt.CheckpointError(f"{run}: no intact checkpoint to export ({'; '.join(problems)})")
    model.load_state_dict(state, strict=False)  # names and shapes checked above
    model.eval()
    if dtype is not None:
        model.to(dtype)
    return task.export(model, Path(out))


def _read_full_weights(path: Path, use_ema: bool) -> dict[str, torch.Tensor]:
    """model.safetensors, with the EMA weights of ema.safetensors over it when `use_ema`."""
    from tubelet.models.hub import load_safetensors

    state = load_safetensors(path / "model.safetensors")
    if use_ema:
        ema_file = path / "ema.safetensors"
        if not ema_file.is_file():
            raise TubeletError(f"{path}: has no EMA weights (ema_decay was 0); pass use_ema=False / --no-ema")
        state.update(load_safetensors(ema_file))
    return state


def default_num_threads() -> None:
    """Use all cores for intra-op parallelism unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))

"""Resumable checkpoints: written atomically, loadable on any world size / wrapper.

Layout of ``RUN/checkpoints/step-NNNNNNN/``::

    model.safetensors      the trainable state, gathered: parameters with requires_grad and all buffers
                           (frozen parameters, e.g. a LoRA run's base, are not written: the run rebuilds
                           them from its config, `init_from` / `vae_path`, and trainer.json lists them)
    ema.safetensors        EMA weights (when EMA is on)
    optimizer.pt           full optimizer state keyed by parameter name (plain tensors only:
                           read back with torch.load(weights_only=True))
    trainer.json           step, data position, counters, the run config, python/numpy RNG states
    rng-rank<R>.safetensors  torch RNG states of rank R (CPU, accelerator, the objective's generator)

A checkpoint whose trainable state (weights, AdamW moments, EMA) is larger than
`TrainConfig.sharded_checkpoint_mb` holds ``sharded/`` (a `torch.distributed.checkpoint` folder: each
rank writes its own shards in parallel, nothing is gathered onto one process) instead of
model.safetensors, ema.safetensors and optimizer.pt. It loads on any world size (DCP reshards);
`tubelet export` reads it in one process.

Everything is written into ``step-NNNNNNN.tmp`` first and renamed when complete, so a
checkpoint directory under its final name is always whole; a ``*.tmp`` left by a killed run
is ignored and removed. Full (gathered) state dicts are used for DDP and FSDP2 alike, via
`torch.distributed.checkpoint.state_dict`, so a run can resume under the other wrapper or
another number of processes (exact bit-for-bit resume needs the same world size).
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tubelet.core.files import atomic_write_json
from tubelet.errors import TubeletError
from tubelet.models.hub import load_safetensors, save_state_dict
from tubelet.train.ema import EMA
from tubelet.train.parallel import DistInfo

log = logging.getLogger(__name__)
STEP_RE = re.compile(r"^step-(\d{7,})$")


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:07d}"


def list_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name) and (p / "trainer.json").is_file()
    ]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(run: Path) -> Path | None:
    found = list_checkpoints(run)
    return found[-1] if found else None


def _options(full: bool = True, strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=True, strict=strict)


def gather_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full state dict with clean names (no 'module.' / compile prefixes). Collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    # a model's state dict holds tensors only (the stub's value type also allows nested containers)
    return cast(dict[str, torch.Tensor], get_model_state_dict(model, options=_options()))


def frozen_parameter_names(model: nn.Module) -> set[str]:
    """Clean names of the parameters that do not train (requires_grad False), DDP unwrapped."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {name.replace("_orig_mod.", "") for name, p in inner.named_parameters() if not p.requires_grad}


def gather_optimizer_state(model: nn.Module, optim: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optim, options=_options())


def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state(), "objective": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch_cpu"])
    try:
        generator.set_state(state["objective"])
    except RuntimeError:  # saved on another kind of device (e.g. a GPU run resumed on a CPU)
        logging.getLogger("tubelet.train").warning(
            "the checkpoint's noise generator was saved on another device; it restarts from a new seed"
        )
        generator.manual_seed(int(state["objective"].sum().item()))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])


def _barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def save_checkpoint(
    run: Path,
    step: int,
    *,
    info: DistInfo,
    model: nn.Module,
    optim: torch.optim.Optimizer,
    ema: EMA | None,
    trainer_state: dict[str, Any],
    generator: torch.Generator,
    keep_last: int,
    sharded: bool = False,
) -> Path:
    """Write a checkpoint (all ranks call this: it is collective), keep the last `keep_last`.

    sharded: write ``sharded/`` with torch.distributed.checkpoint (see the module doc).
    """
    final = step_dir(run, step)
    tmp = final.with_name(final.name + ".tmp")
    frozen = frozen_parameter_names(model)
    if not sharded:
        model_sd = {k: v for k, v in gather_model_state(model).items() if k not in frozen}
        optim_sd = gather_optimizer_state(model, optim)
        ema_sd = ema.state_dict() if ema is not None else None
    if info.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier(info)
    save_state_dict(rng_state(generator), tmp / f"rng-rank{info.rank}.safetensors")
    if sharded:
        import torch.distributed.checkpoint as dcp

        dcp.save(
            _sharded_state(model, optim, ema, frozen),
            checkpoint_id=str(tmp / SHARDED_DIR),
            no_dist=not dist.is_initialized(),
        )
    if info.is_main:
        if not sharded:
            save_state_dict(model_sd, tmp / "model.safetensors")
            if ema_sd is not None:
                save_state_dict(ema_sd, tmp / "ema.safetensors")
            torch.save(optim_sd, tmp / "optimizer.pt")
        state = dict(trainer_state)
        state["python_rng"] = _py_rng()
        state["numpy_rng"] = _np_rng()
        state["world_size"] = info.world_size
        state["frozen_parameters"] = sorted(frozen)  # not in model.safetensors: rebuilt from the config
        atomic_write_json(tmp / "trainer.json", state, indent=1)
    _barrier(info)
    if info.is_main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # atomic: the checkpoint appears whole or not at all
        for old in list_checkpoints(run)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in (run / "checkpoints").glob("*.tmp"):
            if stale != tmp:
                shutil.rmtree(stale, ignore_errors=True)
    _barrier(info)
    return final


SHARDED_DIR = "sharded"


def _sharded_state(
    model: nn.Module, optim: torch.optim.Optimizer | None, ema: EMA | None, frozen: set[str]
) -> dict[str, Any]:
    """{"model", "optim", "ema"}: the live (sharded) tensors DCP saves from and loads into."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    opts = StateDictOptions(full_state_dict=False)
    if optim is not None:
        msd, osd = get_state_dict(model, optim, options=opts)
    else:
        msd, osd = get_model_state_dict(model, options=opts), None
    out: dict[str, Any] = {"model": {k: v for k, v in msd.items() if k not in frozen}}
    if osd is not None:
        out["optim"] = osd
    if ema is not None:
        out["ema"] = ema.sharded_state_dict()
    return out


def is_sharded(path: Path) -> bool:
    return (path / SHARDED_DIR).is_dir()


def read_sharded_weights(path: Path, model: nn.Module, *, use_ema: bool) -> dict[str, torch.Tensor]:
    """The full trainable weights (EMA ones with `use_ema`) of a sharded checkpoint, in one process."""
    import torch.distributed.checkpoint as dcp

    frozen = frozen_parameter_names(model)
    full = {k: torch.empty_like(v, device="cpu") for k, v in model.state_dict().items() if k not in frozen}
    want: dict[str, Any] = {"model": full}
    if use_ema:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        want["ema"] = {n: torch.empty_like(full[n], dtype=torch.float32) for n in names}
    if not (path / SHARDED_DIR / ".metadata").is_file():
        raise CheckpointError(f"{path / SHARDED_DIR}: incomplete (no .metadata)")
    try:
        dcp.load(want, checkpoint_id=str(path / SHARDED_DIR), no_dist=not dist.is_initialized())
    except _dcp_errors() as e:  # CheckpointException wraps each rank's error
        raise CheckpointError(f"{path / SHARDED_DIR}: unreadable ({_first_line(e)})") from None
    out = dict(full)
    if use_ema:
        out.update(want["ema"])
    return out


def _first_line(e: BaseException) -> str:
    failures = getattr(e, "failures", None)  # DCP's CheckpointException: each rank's (error, trace)
    if isinstance(failures, dict) and failures:
        e = next(iter(failures.values()))[0]
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _dcp_errors() -> tuple[type[BaseException], ...]:
    """What DCP raises: ordinary errors, and its CheckpointException (a BaseException)."""
    from torch.distributed.checkpoint.api import CheckpointException

    return (Exception, CheckpointException)


class CheckpointError(TubeletError):
    """A checkpoint folder is damaged or does not belong to this run (names the file and the cause)."""


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The checked `trainer.json` of checkpoint `path` (CheckpointError when damaged)."""
    from tubelet.core.parsing import read_json

    state = read_json(path / "trainer.json", error=CheckpointError, what="trainer state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / 'trainer.json'}: expected a JSON object, got {type(state).__name__}")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path / 'trainer.json'}: 'step' is missing or not an integer >= 0")
    if "data" in state and not isinstance(state["data"], dict):
        raise CheckpointError(f"{path / 'trainer.json'}: 'data' (the data position) is not an object")
    return state


def _read_optimizer(path: Path) -> dict[str, Any]:
    import pickle

    file = path / "optimizer.pt"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "not plain tensors"
        raise CheckpointError(
            f"{file}: refused to load ({first[:160]}); only plain tensor state is read"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable ({str(e).strip().splitlines()[0][:160]})") from None
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise CheckpointError(f"{file}: not an optimizer state (expected 'state' and 'param_groups')")
    return sd


def load_checkpoint(
    path: Path,
    *,
    info: DistInfo,
    model: nn.Module,
    optim: torch.optim.Optimizer,
    generator: torch.Generator,
    ema: EMA | None = None,
) -> dict[str, Any]:
    """Restore model/optimizer/EMA/RNG from `path`; returns the trainer state (trainer.json).

    Every file is read and checked before anything is restored; a damaged or foreign checkpoint
    raises CheckpointError naming the file.
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    from tubelet.errors import ModelLoadError

    state = read_trainer_state(path)
    if is_sharded(path):
        _load_sharded(path, state, info=info, model=model, optim=optim, generator=generator, ema=ema)
        return state
    try:
        model_sd = load_safetensors(path / "model.safetensors")
        ema_file = path / "ema.safetensors"
        ema_sd = load_safetensors(ema_file) if ema_file.is_file() else None
        rng = _read_rng(path, state, info)
    except ModelLoadError as e:
        raise CheckpointError(str(e)) from None
    optim_sd = _read_optimizer(path)
    frozen = frozen_parameter_names(model)
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    expected_all = {k.replace("_orig_mod.", ""): v for k, v in inner.state_dict().items()}
    expected = set(expected_all) - frozen
    if set(model_sd) != expected:
        missing, extra = sorted(expected - set(model_sd)), sorted(set(model_sd) - expected)
        raise CheckpointError(
            f"{path / 'model.safetensors'}: does not match this run's model "
            f"(missing {missing[:3]}, unexpected {extra[:3]}): another preset or size?"
        )
    for k, v in model_sd.items():
        want = tuple(getattr(expected_all[k], "shape", ()))
        if tuple(v.shape) != want:
            raise CheckpointError(
                f"{path / 'model.safetensors'}: {k} has shape {tuple(v.shape)}, this run's model has {want} "
                "(another preset or size?)"
            )
    try:
        set_model_state_dict(model, cast(dict[str, Any], model_sd), options=_options(strict=not frozen))
        set_optimizer_state_dict(model, optim, optim_sd, options=_options())
        if rng is not None:
            set_rng_state(rng, generator)
            random.setstate(_to_tuple(state["python_rng"]))
            np.random.set_state(_np_from(state["numpy_rng"]))
        if ema is not None and ema_sd is not None:
            ema.load_state_dict(ema_sd, int(state.get("ema_updates", state["step"])))
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"{path}: cannot be restored ({_first_line(e)})") from None
    return state


def _read_rng(path: Path, state: dict[str, Any], info: DistInfo) -> dict[str, torch.Tensor] | None:
    """This rank's torch RNG states, when the checkpoint was saved with the same world size."""
    rng_file = path / f"rng-rank{info.rank}.safetensors"
    same_world = state.get("world_size") == info.world_size
    return load_safetensors(rng_file) if rng_file.is_file() and same_world else None


def _load_sharded(
    path: Path,
    state: dict[str, Any],
    *,
    info: DistInfo,
    model: nn.Module,
    optim: torch.optim.Optimizer,
    generator: torch.Generator,
    ema: EMA | None,
) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from tubelet.errors import ModelLoadError

    if not (path / SHARDED_DIR / ".metadata").is_file():
        raise CheckpointError(f"{path / SHARDED_DIR}: incomplete (no .metadata)")
    try:
        rng = _read_rng(path, state, info)
    except ModelLoadError as e:
        raise CheckpointError(str(e)) from None
    frozen = frozen_parameter_names(model)
    live = _sharded_state(model, optim, ema, frozen)
    try:
        # into the live tensors, in place
        dcp.load(live, checkpoint_id=str(path / SHARDED_DIR), no_dist=not dist.is_initialized())
        set_state_dict(
            model, optim, model_state_dict=live["model"], optim_state_dict=live["optim"],
            options=StateDictOptions(full_state_dict=False, strict=not frozen),
        )  # fmt: skip
    except _dcp_errors() as e:  # CheckpointException wraps each rank's error
        raise CheckpointError(f"{path / SHARDED_DIR}: cannot be restored ({_first_line(e)})") from None
    if ema is not None:
        ema.num_updates = int(state.get("ema_updates", state["step"]))
    if rng is not None:
        set_rng_state(rng, generator)
        random.setstate(_to_tuple(state["python_rng"]))
        np.random.set_state(_np_from(state["numpy_rng"]))


def load_latest_checkpoint(
    run: Path,
    *,
    info: DistInfo,
    model: nn.Module,
    optim: torch.optim.Optimizer,
    generator: torch.Generator,
    ema: EMA | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """Restore the newest intact checkpoint of `run` (None when it has none).

    A damaged newer checkpoint is skipped with a warning that names it and the cause; when every
    checkpoint is damaged, CheckpointError lists them.
    """
    found = list_checkpoints(run)
    problems: list[str] = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path, info=info, model=model, optim=optim, generator=generator, ema=ema)
        except CheckpointError as e:
            problems.append(str(e))
            if info.is_main:
                log.warning("checkpoint %s is damaged, trying the one before it: %s", path.name, e)
            continue
        if problems and info.is_main:
            log.warning(
                "resuming from %s; %d newer damaged checkpoint(s) left in place", path.name, len(problems)
            )
        return path, state
    if problems:
        raise CheckpointError(
            f"{run}: no intact checkpoint ({'; '.join(problems)}); remove the damaged step folders to start "
            "over, or choose a new --out"
        )
    return None


def _py_rng() -> list[Any]:
    v, internal, g = random.getstate()
    return [v, list(internal), g]


def _to_tuple(s: list[Any]) -> tuple[Any, ...]:
    return (s[0], tuple(s[1]), s[2])


def _np_rng() -> list[Any]:
    state = np.random.get_state()  # legacy=True (the default): always the 5-tuple
    assert isinstance(state, tuple)
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _np_from(s: list[Any]) -> tuple[Any, ...]:
    return (s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4])

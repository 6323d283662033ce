"""Training configuration: one typed dataclass tree, named presets, YAML with strict keys.

A run is described by `TrainConfig`. It comes from a preset (`--preset NAME`), a YAML file
(`--config FILE.yaml`, whose keys map onto the dataclasses; unknown keys are errors), or both
(the file's keys override the preset's), and finally command-line flags. The engine's presets are
the tiny test runs below; recipes (`tubelet.registry`) add theirs, e.g. the stages of a model's
training, each naming its inputs and its run directory so that `tubelet train --preset NAME`
alone runs the stage.

Model fields accept a preset name (str) or a full mapping of the component's config:

    task: dit
    dit: small                 # or {dim: 256, num_heads: 4, ...}
    text_encoder: small        # a text-encoder preset or mapping (trained jointly; a mapping's
                               # _class picks the encoder, default ByteTextEncoder), or a
                               # pretrained text-encoder dir (frozen), e.g. a converted umT5
    vae_path: runs/vae/model   # frozen VAE for DiT runs; null = pixel space (DiT in_channels 3)
    data: {fps: 8, buckets: [[17, 64, 64, 32]]}
    data_dir: data/clips       # the dataset when --data is not given (or cache: a latent cache)
    out_dir: runs/my-run       # the run directory when --out is not given
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tubelet import registry
from tubelet.config import config_from_dict, config_to_dict, load_config_file
from tubelet.data.dataset import Bucket, DataConfig
from tubelet.diffusion.flow import FlowConfig
from tubelet.errors import ConfigError

# Training seeds derive per-stream seeds (seed * 7919, seed * 1_000_003 + rank) that must stay 64-bit.
SEED_MAX = 2**32 - 1


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then a constant, cosine or linear decay to `min_lr_ratio * lr`."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"optim.{name} must be {rule}, got {getattr(self, name)!r}")

        if not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a finite number > 0")
        if len(self.betas) != 2 or not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in self.betas):
            raise bad("betas", "two numbers in [0, 1), e.g. [0.9, 0.99]")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "a finite number >= 0")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise bad("eps", "a finite number > 0")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", "an integer >= 0")
        if not (math.isfinite(self.min_lr_ratio) and 0.0 <= self.min_lr_ratio <= 1.0):
            raise bad("min_lr_ratio", "a number in [0, 1]")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise bad("grad_clip", "a finite number >= 0 (0 = no clipping)")


@dataclass
class BoxTrainConfig:
    """Box control (Boximator-style): a `BoxAdapter` on the DiT, trained on the dataset's box tracks
    (the optional ``boxes`` of captions.jsonl) with random box dropout, so one model serves text-only,
    sparse-box and dense-box use. See docs/box-control.md."""

    freeze_base: bool = True  # train the adapter only (the base DiT and text encoder from init_from)
    p_drop_all: float = 0.2  # a clip trains without boxes (text only)
    p_drop_track: float = 0.2  # a track is dropped
    p_first_only: float = 0.15  # a track keeps only its first frame (pins the start)
    p_drop_frame: float = 0.3  # a box of a frame is dropped (sparse keyframes)
    p_soft: float = 0.2  # a track becomes soft: its box grows to a random region holding the object
    adapter: dict[str, Any] = field(default_factory=dict)  # BoxAdapterConfig overrides (e.g. num_freqs)

    def __post_init__(self) -> None:
        for name in ("p_drop_all", "p_drop_track", "p_first_only", "p_drop_frame", "p_soft"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ConfigError(f"boxes.{name} must be a probability in [0, 1], got {value!r}")


@dataclass
class LoRATrainConfig:
    """A LoRA fine-tune: low-rank adapters on the DiT (tubelet.models.lora), the base frozen.

    The base model comes from `init_from` (a pipeline directory, e.g. a converted Wan2.1); only the
    adapters train, and the run exports them as LoRA files (diffusers and ComfyUI formats).
    """

    rank: int = 32
    alpha: float | None = None  # scale = alpha / rank; None: alpha = rank
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn", "ffn"])  # see tubelet.models.lora
    blocks: list[int] | None = None  # None: every block
    # the frozen base's dtype: "auto" = bfloat16 when the run computes in bfloat16 (halves its memory),
    # else float32; the adapters always train in float32
    base_dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    def __post_init__(self) -> None:
        self.lora_config()  # checks rank, alpha, dropout, targets, blocks

    def lora_config(self) -> Any:
        from tubelet.models.lora import LoRAConfig

        return LoRAConfig(self.rank, self.alpha, self.dropout, list(self.targets), self.blocks)


@dataclass
class SampleConfig:
    """Clips written to RUN/samples/ during training and the defaults saved with the final model."""

    every: int = 0  # steps between sample sets; 0 = only at the end
    prompts: list[str] = field(default_factory=list)
    steps: int = 20
    guidance_scale: float = 4.0
    sampler: str = "unipc"
    seed: int = 0


@dataclass
class TrainConfig:
    """Everything a run needs. See the module docstring for the model fields."""

    task: Literal["dit", "vae"] = "dit"
    # ---- models
    dit: Any = "tiny"  # str preset | DiTConfig mapping
    text_encoder: Any = (
        "tiny"  # str preset | config mapping (`_class` picks the encoder) | pretrained encoder dir
    )
    train_text_encoder: bool = True  # train a fresh or jointly trainable encoder with the DiT
    vae: Any = "tiny"  # for task=vae: str preset | VAEConfig mapping
    vae_path: str | None = None  # for task=dit: a trained VAE model dir (frozen); None = pixel space
    init_from: str | None = None  # start from the weights of a model/pipeline dir (fine-tuning)
    # ---- data
    data: DataConfig = field(default_factory=DataConfig)
    data_dir: str | None = None  # the dataset directory when none is given (`tubelet train --data`)
    cache: str | None = None  # a latent cache dir (`tubelet data cache`) used instead of decoding videos
    # ---- objective
    flow: FlowConfig = field(default_factory=FlowConfig)
    kl_weight: float = 1e-6  # task=vae: weight of the KL term (per element, relative to the L1 term)
    recon_loss: Literal["l1", "mse"] = "l1"
    # task=vae: extra reconstruction weight on foreground pixels (those differing from the clip's
    # dominant colour, as `FlowConfig.foreground_weight`); each sample's loss is normalised by its total
    # weight. Small objects on flat backgrounds are otherwise learned long after the background.
    recon_foreground_weight: float = 0.0
    # ---- optimisation
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int = 1000
    grad_accum: int = 1
    ema_decay: float | None = 0.999
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    grad_checkpointing: bool = False
    compile: bool = False
    device: str = "auto"
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    seed: int = 0
    # Where the objective's generator draws noise and noise levels: "auto" = on the training device
    # (on a GPU, drawing a batch of noise on the host and copying it costs more than the step);
    # "cpu" = always on the host. Checkpoints resume on the same kind of device.
    rng_device: Literal["auto", "cpu"] = "auto"
    # A trial step per frame bucket before the first real one, so a bucket that will not fit is named
    # up front instead of an out-of-memory crash at the step that first draws it (train/memprobe.py):
    # "auto" = on CUDA, "on" = also on the CPU, "off".
    memory_check: Literal["auto", "on", "off"] = "auto"
    # ---- bookkeeping
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 3
    # Checkpoints whose trainable state (weights + AdamW moments + EMA, fp32) is above this many MiB
    # are written sharded with torch.distributed.checkpoint (each rank its part, nothing gathered);
    # smaller ones as single files. 0: always sharded.
    sharded_checkpoint_mb: float = 2048.0
    max_bad_steps: int = 5  # consecutive NaN/inf losses before the run stops
    samples: SampleConfig = field(default_factory=SampleConfig)
    boxes: BoxTrainConfig | None = None  # box control training (None: a plain text-to-video run)
    lora: LoRATrainConfig | None = None  # a LoRA fine-tune of init_from (None: train the weights themselves)
    out_dir: str | None = None  # the run directory when none is given (`tubelet train --out`)

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"TrainConfig.seed must be in [0, {SEED_MAX}], got {self.seed}")
        for name in ("max_steps", "grad_accum", "log_every", "keep_last", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.sharded_checkpoint_mb) and self.sharded_checkpoint_mb >= 0):
            raise ConfigError(
                f"TrainConfig.sharded_checkpoint_mb must be >= 0, got {self.sharded_checkpoint_mb}"
            )
        if self.save_every < 0:
            raise ConfigError(f"TrainConfig.save_every must be >= 0, got {self.save_every}")
        if not self.recon_foreground_weight >= 0.0:
            raise ConfigError(
                f"TrainConfig.recon_foreground_weight must be >= 0, got {self.recon_foreground_weight}"
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"TrainConfig.ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        if self.lora is not None:
            if self.task != "dit":
                raise ConfigError("lora: LoRA fine-tunes a DiT (task: dit)")
            if not self.init_from:
                raise ConfigError(
                    "lora: a LoRA fine-tunes a trained model: set init_from to its pipeline directory"
                )
            if self.boxes is not None:
                raise ConfigError(
                    "lora and boxes in one run are not supported yet: train one, then the other"
                )


def _small_data(frames: int, size: int, batch: int, image_batch: int = 0, workers: int = 0) -> DataConfig:
    buckets: list[Bucket | tuple[int, int, int, int]] = [Bucket(frames, size, size, batch)]
    if image_batch:
        buckets.append(Bucket(1, size, size, image_batch))
    return DataConfig(fps=8.0, buckets=buckets, num_workers=workers, random_start=False)


TRAIN_PRESETS: dict[str, TrainConfig] = {
    # Seconds on a CPU: for tests and smoke runs (pixel space, tiny DiT + byte encoder).
    "tiny": TrainConfig(
        task="dit",
        dit="tiny",
        text_encoder={"dim": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64, "max_length": 256},
        data=_small_data(5, 16, 2),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        max_steps=20,
        log_every=1,
        save_every=10,
        samples=SampleConfig(every=0, prompts=["a red circle moving right"], steps=4, guidance_scale=1.0),
    ),
    # Wan2.1-T2V-1.3B fine-tunes (docs/finetune.md). Convert the diffusers checkpoint into
    # models/wan2.1-t2v-1.3b and cache the dataset's latents + umT5 embeddings into cache/wan-lora
    # (the error for a missing input names both commands); 81 frames at 480 x 832, 16 fps, bf16,
    # activation checkpointing. LoRA: rank 32 on attention + FFN, the base frozen in bf16.
    "wan2.1-1.3b-lora": TrainConfig(
        task="dit",
        dit="init_from",
        text_encoder="init_from",
        vae_path="init_from",
        train_text_encoder=False,
        init_from="models/wan2.1-t2v-1.3b",
        cache="cache/wan-lora",
        out_dir="runs/wan2.1-1.3b-lora",
        data=DataConfig(fps=16.0, buckets=[Bucket(81, 480, 832, 1)], num_workers=2),
        flow=FlowConfig(shift=3.0, caption_dropout=0.1),
        optim=OptimConfig(lr=1e-4, warmup_steps=50, weight_decay=0.0),
        precision="bf16",
        grad_checkpointing=True,
        ema_decay=None,
        max_steps=2000,
        log_every=10,
        save_every=250,
        samples=SampleConfig(
            every=0, prompts=["a corgi runs along a beach at sunset"], steps=30, guidance_scale=5.0
        ),
        lora=LoRATrainConfig(rank=32, alpha=32.0, targets=["attn", "ffn"]),
    ),
    # The same data, every weight of the DiT trained (FSDP2 over several GPUs: --parallel fsdp).
    "wan2.1-1.3b-full": TrainConfig(
        task="dit",
        dit="init_from",
        text_encoder="init_from",
        vae_path="init_from",
        train_text_encoder=False,
        init_from="models/wan2.1-t2v-1.3b",
        cache="cache/wan-lora",
        out_dir="runs/wan2.1-1.3b-full",
        data=DataConfig(fps=16.0, buckets=[Bucket(81, 480, 832, 1)], num_workers=2),
        flow=FlowConfig(shift=3.0, caption_dropout=0.1),
        optim=OptimConfig(lr=1e-5, warmup_steps=100, weight_decay=0.01),
        precision="bf16",
        grad_checkpointing=True,
        ema_decay=None,
        max_steps=2000,
        log_every=10,
        save_every=250,
        samples=SampleConfig(
            every=0, prompts=["a corgi runs along a beach at sunset"], steps=30, guidance_scale=5.0
        ),
    ),
    # A tiny causal VAE run (tests, smoke runs).
    "tiny-vae": TrainConfig(
        task="vae",
        vae="tiny",
        data=_small_data(5, 16, 2),
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        max_steps=20,
        log_every=1,
        save_every=10,
        ema_decay=None,
    ),
}


# Paths that training presets read -> the command that makes each (registered by recipes with
# `tubelet.registry.register("stage_input", path, command)`), for the error when one is missing.
STAGE_INPUTS: dict[str, str] = {
    "models/wan2.1-t2v-1.3b": "tubelet convert wan Wan2.1-T2V-1.3B-Diffusers models/wan2.1-t2v-1.3b",
    "cache/wan-lora": (
        "tubelet data cache YOUR_DATASET --model models/wan2.1-t2v-1.3b --preset wan2.1-1.3b-lora "
        "--out cache/wan-lora"
    ),
}


def resolve_train_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Preset, then YAML file keys, then `overrides` (dotted keys allowed: "optim.lr")."""
    if preset is None and config_file is None:
        raise ConfigError("give a --preset NAME or a --config FILE.yaml")
    base = config_to_dict(copy.deepcopy(registry.lookup("train_preset", preset))) if preset else {}
    if config_file is not None:
        _merge(base, load_config_file(config_file))
    for key, value in (overrides or {}).items():
        _merge(base, _nest(key, value))
    cfg = config_from_dict(TrainConfig, base, where=str(config_file or f"preset {preset}"))
    # Model presets are checked now (a recipe's are found through the registry), not at model build.
    if (
        cfg.task == "dit" and isinstance(cfg.dit, str) and cfg.dit != "init_from"
    ):  # see tasks.resolve_from_init
        registry.lookup("dit_preset", cfg.dit)
    if cfg.task == "vae" and isinstance(cfg.vae, str):
        registry.lookup("vae_preset", cfg.vae)
    return cfg


def resolve_run_paths(
    cfg: TrainConfig, data_dir: str | Path | None = None, run_dir: str | Path | None = None
) -> tuple[Path | None, Path]:
    """The dataset and run directories of a run (the arguments, else the config's `data_dir` /
    `out_dir`), after checking that every input the run reads exists.

    A missing input (`cache`, `vae_path`, `init_from`, the dataset) is a `ConfigError` naming the
    field, the path and, when a recipe registered it (`STAGE_INPUTS`), the command that makes it.
    """
    data = Path(data_dir) if data_dir is not None else Path(cfg.data_dir) if cfg.data_dir else None
    if run_dir is None and cfg.out_dir is None:
        raise ConfigError("no run directory: give --out DIR (the config names no out_dir)")
    run = Path(run_dir) if run_dir is not None else Path(str(cfg.out_dir))
    vae = cfg.vae_path if cfg.vae_path != "init_from" else None  # init_from's own vae/ (resolve_from_init)
    inputs = [("cache", cfg.cache), ("vae_path", vae), ("init_from", cfg.init_from)]
    if not cfg.cache:  # a cache replaces the dataset
        inputs.append(("data_dir", str(data) if data is not None else None))
    for name, value in inputs:
        if value and not Path(value).exists():
            maker = registry.find("stage_input", Path(value).as_posix())
            where = "" if Path(value).is_absolute() else f" (relative to {Path.cwd()})"
            hint = f"; make it first with `{maker}`" if maker else ""
            raise ConfigError(f"{name}: {value} does not exist{where}{hint}")
    return data, run


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v

"""Training configuration: one typed dataclass tree, named presets, YAML with strict keys.

A run is described by `TrainConfig`. It comes from a preset (`--preset NAME`), a YAML file
(`--config FILE.yaml`, whose keys map onto the dataclasses; unknown keys are errors), or both
(the file's keys override the preset's), and finally command-line flags.

Model fields accept a preset name (str) or a full mapping of the component's config:

    task: dit
    dit: small                 # or {dim: 256, num_heads: 4, ...}
    text_encoder: small        # ByteTextConfig preset/mapping (trained jointly), "shapes" (the
                               # shapes-world prompt encoder, trained jointly; a mapping with
                               # _class: ShapesTextEncoder), or a pretrained text-encoder dir
                               # (frozen), e.g. a converted umT5
    vae_path: runs/vae/model   # frozen VAE for DiT runs; null = pixel space (DiT in_channels 3)
    data: {fps: 8, buckets: [[17, 64, 64, 32]]}
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tubelet.config import config_from_dict, config_to_dict, load_config_file
from tubelet.data.dataset import Bucket, DataConfig
from tubelet.diffusion.flow import FlowConfig
from tubelet.errors import ConfigError


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
    grad_clip: float = 1.0


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
    text_encoder: Any = "tiny"  # str preset (byte or "shapes") | config mapping | pretrained encoder dir
    train_text_encoder: bool = True  # only for a ByteTextEncoder
    vae: Any = "tiny"  # for task=vae: str preset | VAEConfig mapping
    vae_path: str | None = None  # for task=dit: a trained VAE model dir (frozen); None = pixel space
    init_from: str | None = None  # start from the weights of a model/pipeline dir (fine-tuning)
    # ---- data
    data: DataConfig = field(default_factory=DataConfig)
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
    # ---- bookkeeping
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 3
    max_bad_steps: int = 5  # consecutive NaN/inf losses before the run stops
    samples: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum", "log_every", "keep_last", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.save_every < 0:
            raise ConfigError(f"TrainConfig.save_every must be >= 0, got {self.save_every}")
        if not self.recon_foreground_weight >= 0.0:
            raise ConfigError(
                f"TrainConfig.recon_foreground_weight must be >= 0, got {self.recon_foreground_weight}"
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"TrainConfig.ema_decay must be in (0, 1) or null, got {self.ema_decay}")


def _small_data(frames: int, size: int, batch: int, image_batch: int = 0, workers: int = 0) -> DataConfig:
    buckets = [Bucket(frames, size, size, batch)]
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


# The first latent recipe (a time-kernel-3 VAE with x4 temporal compression), kept for comparison:
#   tubelet data shapes --out data/shapes --num 20000 --seed 1000
#   tubelet train --preset shapes-vae --data data/shapes --out runs/shapes-vae
#   tubelet train --preset shapes-vae-long --data data/shapes --out runs/shapes-vae-long --set init_from=runs/shapes-vae/model
#   tubelet data cache data/shapes --model runs/shapes-vae/model --preset shapes-t2v-latent --out cache/shapes
#   tubelet train --preset shapes-t2v-latent --set cache=cache/shapes --set vae_path=runs/shapes-vae/model \
#       --out runs/shapes-t2v-latent
TRAIN_PRESETS["shapes-vae"] = TrainConfig(
    task="vae",
    vae={"base_dim": 32, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1},
    # Stage 1 on single frames (a random frame of each clip): they take the causal VAE's first-frame
    # path, which shares every spatial layer, at 1/17 of a clip's cost. Small objects under x8
    # compression need thousands of steps (measured: ~0.36 L1 on object pixels after 300 steps of
    # overfitting 4 clips, for this VAE and a plain 2D autoencoder alike).
    data=DataConfig(fps=8.0, buckets=[Bucket(1, 64, 64, 32)], num_workers=1, random_start=True),
    # lr >= 3e-4 is unstable for this VAE (measured on a 4-clip overfit: loss oscillates 0.3-0.6).
    optim=OptimConfig(lr=1.5e-4, warmup_steps=100, schedule="constant", grad_clip=1.0),
    kl_weight=1e-4,
    ema_decay=0.998,
    precision="fp32",  # the VAE's convolutions use oneDNN directly in float32 on the CPU
    max_steps=4000,
    log_every=10,
    save_every=200,
    samples=SampleConfig(every=1000),
)
# Stage 2: the same VAE on whole 17-frame clips. Causal video VAEs do not generalise past the clip
# length they were trained on (measured: after 9-frame training, frames 10-17 decode with 3-8x the
# error of frames 1-9), so the default model's VAE finishes on the generation length.
TRAIN_PRESETS["shapes-vae-long"] = dataclasses.replace(
    TRAIN_PRESETS["shapes-vae"],
    data=_small_data(17, 64, 4, workers=1),
    optim=OptimConfig(lr=1.5e-4, warmup_steps=20, schedule="constant", grad_clip=1.0),
    max_steps=1000,
)


# The pixel-space recipe (DiT with x0-prediction; see docs/model-card.md), kept for comparison and as
# the base of the shapes presets below. 16 x 64 x 64 clips, (4, 8, 8) tubelets -> 256 tokens.
#   tubelet data shapes --out data/shapes --num 20000 --seed 1000 \
#       --holdout tubelet/assets/suites/shapes-holdout.json
#   tubelet train --preset shapes-t2v --data data/shapes --out runs/shapes-t2v
TRAIN_PRESETS["shapes-t2v"] = TrainConfig(
    task="dit",
    dit="shapes-pixel",
    # The shapes-world prompt encoder: one token per object (its colour, shape, size and motion) and
    # one for the scene. With the byte encoder the prompt never reached the objects (docs/model-card.md).
    text_encoder="shapes",
    vae_path=None,
    data=_small_data(16, 64, 32, workers=1),
    # Noise levels for two jobs at once. 16 x 64 x 64 clips of flat colours are so redundant that a
    # clip is recoverable from the noisy input up to s ~ 0.98, so the prompt (colours, shapes, layout,
    # motion) only matters for s > 0.98; the objects (5% of the pixels) are learned where they are
    # visible. Measured: with half the noise levels above 0.99 (shift 100) the prompts were used by
    # step 400 but objects stayed dim smudges (x0 error 0.04 at s = 0.5 through step 800); with a wide
    # shift-10 distribution (26% above 0.98) objects improved (0.022 at step 400) but the prompts were
    # shut out. So: a 50/50 mixture of the two regimes (shift 100 and shift 3), sampled with shift 100.
    # See docs/model-card.md for the runs behind these numbers.
    flow=FlowConfig(caption_dropout=0.1, shift=100.0, shift_mix=[100.0, 3.0], logit_std=1.5),
    optim=OptimConfig(lr=5e-4, warmup_steps=150, schedule="cosine", min_lr_ratio=0.05, grad_clip=1.0),
    ema_decay=0.999,
    max_steps=2600,
    log_every=20,
    save_every=200,
    samples=SampleConfig(
        every=1000,
        prompts=[
            "a red circle moving right",
            "a big blue square moving up and a small yellow triangle staying still, on a white background",
            "一个绿色三角形向左移动",
            "一个小的紫色圆形向下移动和一个橙色正方形向右移动，黑色背景",
        ],
        steps=20,
        guidance_scale=4.0,
    ),
)
# The latent-path variant, on the shapes VAE (kept for comparison; see docs/model-card.md):
TRAIN_PRESETS["shapes-t2v-latent"] = dataclasses.replace(
    TRAIN_PRESETS["shapes-t2v"],
    dit="shapes",  # 16 x 5 x 8 x 8 latents, patch (1, 2, 2): 80 tokens per clip
    vae_path=None,  # set to the shapes-vae run's model dir
    data=_small_data(17, 64, 32, workers=1),
    flow=FlowConfig(caption_dropout=0.1),
    optim=OptimConfig(lr=4e-4, warmup_steps=200, schedule="cosine", min_lr_ratio=0.1, grad_clip=1.0),
    max_steps=5000,
    save_every=250,
)


# The embedded default model (docs/model-card.md): the latent path with a frame-by-frame VAE
# (time_kernel 1, no temporal compression) trained on single frames only (an image autoencoder
# applied to each frame), object pixels weighted; then the DiT `shapes-latent-conv` on its cached
# latents (64 tokens per clip).
#   tubelet train --preset shapes-vae-frames --data data/shapes --out runs/vae-frames
#   tubelet data cache data/shapes --model runs/vae-frames/model --preset shapes-t2v-frames --out cache/frames
#   tubelet train --preset shapes-t2v-frames --set cache=cache/frames --set vae_path=runs/vae-frames/model \
#       --out runs/t2v-frames
TRAIN_PRESETS["shapes-vae-frames"] = dataclasses.replace(
    TRAIN_PRESETS["shapes-vae"],
    vae={
        "base_dim": 32,
        "z_dim": 8,
        "dim_mult": [1, 2, 2, 2],
        "num_res_blocks": 1,
        "temporal_downsample": [False, False, False],
        "time_kernel": 1,
    },
    recon_foreground_weight=10.0,
    optim=OptimConfig(lr=2e-4, warmup_steps=100, schedule="cosine", min_lr_ratio=0.1, grad_clip=1.0),
    max_steps=2500,
)
TRAIN_PRESETS["shapes-t2v-frames"] = dataclasses.replace(
    TRAIN_PRESETS["shapes-t2v"],
    dit="shapes-latent-conv",
    vae_path=None,  # set to the shapes-vae-frames run's model dir
    flow=FlowConfig(caption_dropout=0.1, shift=5.0, logit_std=1.2),
    optim=OptimConfig(lr=5e-4, warmup_steps=150, schedule="cosine", min_lr_ratio=0.05, grad_clip=1.0),
    max_steps=5000,
    save_every=250,
)
# Its second stage: 2500 more steps from the first stage's model at a lower learning rate.
#   tubelet train --preset shapes-t2v-frames-ft --set init_from=runs/t2v-frames/model \
#       --set cache=cache/frames --set vae_path=runs/vae-frames/model --out runs/t2v-frames-ft
TRAIN_PRESETS["shapes-t2v-frames-ft"] = dataclasses.replace(
    TRAIN_PRESETS["shapes-t2v-frames"],
    optim=OptimConfig(lr=2e-4, warmup_steps=50, schedule="cosine", min_lr_ratio=0.05, grad_clip=1.0),
    max_steps=2500,
)

# Third stage, on a GPU: batch 256 on more clips (20,000 seeds), from the second stage's model. Run on
# one H100 beside another training (`scripts/train_on_gpu.sh`): 931 steps in 5.5 min.
#   tubelet data shapes --out data/shapes-20k --num 20000 --seed 1000 --frames 16 --workers 16 \
#       --holdout tubelet/assets/suites/shapes-holdout.json
#   tubelet data cache data/shapes-20k --model runs/vae-frames/model --preset shapes-t2v-frames \
#       --out cache/frames-20k --workers 16 --batch-size 256
#   tubelet train --preset shapes-t2v-frames-big --set init_from=runs/t2v-frames-ft/model \
#       --set cache=cache/frames-20k --set vae_path=runs/vae-frames/model --out runs/t2v-frames-big
TRAIN_PRESETS["shapes-t2v-frames-big"] = dataclasses.replace(
    TRAIN_PRESETS["shapes-t2v-frames-ft"],
    data=_small_data(16, 64, 256, workers=1),
    optim=OptimConfig(lr=3e-4, warmup_steps=50, schedule="cosine", min_lr_ratio=0.05, grad_clip=1.0),
    max_steps=931,
)
# Then the low noise levels, where the shapes' edges are drawn: half of each batch draws its noise
# level with shift 1 instead of 5 (with shift 5 alone only ~3% of the training noise levels are below
# s = 0.36, and the model rounded true squares when asked to finish them from there; see
# docs/model-card.md). Sampling keeps shift 5.
#   tubelet train --preset shapes-t2v-frames-detail --set init_from=runs/t2v-frames-big/model \
#       --set cache=cache/frames --set vae_path=runs/vae-frames/model --out runs/t2v-frames-detail
TRAIN_PRESETS["shapes-t2v-frames-detail"] = dataclasses.replace(
    TRAIN_PRESETS["shapes-t2v-frames-ft"],
    data=_small_data(16, 64, 64, workers=1),
    flow=FlowConfig(caption_dropout=0.1, shift=5.0, logit_std=1.2, shift_mix=[5.0, 1.0]),
    optim=OptimConfig(lr=1.5e-4, warmup_steps=50, schedule="cosine", min_lr_ratio=0.05, grad_clip=1.0),
    max_steps=2000,
)

# Fifth stage, on a GPU: the low-noise mix of the fourth stage at batch 256 for as many steps as a GPU
# budget allows (scripts/train_on_gpu.sh RUNS="det low" sets max_steps from a throughput probe), from
# the fourth stage's model. The shipped model's fifth stage: 2,847 steps, ~5.2 min on one H100 beside
# another run (run S in docs/model-card.md).
#   tubelet train --preset shapes-t2v-frames-gpu --set init_from=runs/t2v-frames-detail/model \
#       --set cache=cache/frames-20k --set vae_path=runs/vae-frames/model --out runs/t2v-frames-gpu
TRAIN_PRESETS["shapes-t2v-frames-gpu"] = dataclasses.replace(
    TRAIN_PRESETS["shapes-t2v-frames-detail"],
    data=_small_data(16, 64, 256, workers=1),
    optim=OptimConfig(lr=2e-4, warmup_steps=100, schedule="cosine", min_lr_ratio=0.05, grad_clip=1.0),
    max_steps=4000,
    log_every=50,
    save_every=1000,
)

# `shapes-latent-fine` (256 tokens) from scratch at batch 256: run M in docs/model-card.md, tried on an
# H100 beside the third stage by scripts/train_on_gpu.sh (which sizes max_steps to its budget); not shipped.
TRAIN_PRESETS["shapes-t2v-fine"] = dataclasses.replace(
    TRAIN_PRESETS["shapes-t2v-frames"],
    dit="shapes-latent-fine",
    data=_small_data(16, 64, 256, workers=1),
    optim=OptimConfig(lr=8e-4, warmup_steps=200, schedule="cosine", min_lr_ratio=0.05, grad_clip=1.0),
    max_steps=8000,
    log_every=50,
    save_every=1000,
)


def resolve_train_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Preset, then YAML file keys, then `overrides` (dotted keys allowed: "optim.lr")."""
    if preset is None and config_file is None:
        raise ConfigError("give a --preset NAME or a --config FILE.yaml")
    if preset is not None and preset not in TRAIN_PRESETS:
        raise ConfigError(f"unknown training preset {preset!r}; available: {sorted(TRAIN_PRESETS)}")
    base = config_to_dict(copy.deepcopy(TRAIN_PRESETS[preset])) if preset else {}
    if config_file is not None:
        _merge(base, load_config_file(config_file))
    for key, value in (overrides or {}).items():
        _merge(base, _nest(key, value))
    return config_from_dict(TrainConfig, base, where=str(config_file or f"preset {preset}"))


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

"""The shipped shapes-t2v recipe as presets: its DiT, its text encoder and its six training stages.

Every stage preset names its inputs and its run directory under one layout, relative to the
directory the commands run in (e.g. the repository root, where data/, cache/ and runs/ are ignored
by git), so that the commands of `COMMANDS`, in order, reproduce the embedded default model::

    data/shapes              tubelet data shapes (12,000 seeds, 16 frames, held-out combinations out)
    data/shapes-20k          the same with 20,000 seeds (third stage)
    data/shapes-25k          the same with 25,000 seeds (fifth stage)
    runs/shapes-vae-frames/  the frame-by-frame VAE                   (reads data/shapes)
    cache/shapes-frames      its latents of data/shapes               (tubelet data cache)
    cache/shapes-frames-20k  its latents of data/shapes-20k
    cache/shapes-frames-25k  its latents of data/shapes-25k
    runs/shapes-t2v-frames/         DiT stage 1: from scratch         (cache/shapes-frames)
    runs/shapes-t2v-frames-ft/      DiT stage 2: lower learning rate  (cache/shapes-frames)
    runs/shapes-t2v-frames-big/     DiT stage 3: batch 256, GPU       (cache/shapes-frames-20k)
    runs/shapes-t2v-frames-detail/  DiT stage 4: low noise levels     (cache/shapes-frames)
    runs/shapes-t2v-frames-gpu/     DiT stage 5: stage 4's mix at batch 256, GPU (cache/shapes-frames-25k)
    runs/shapes-t2v-boxes/          box control: a box adapter on stage 5, base frozen (cache/shapes-boxes)
    runs/shapes-t2v-boxes-joint/    box control, stage 2: adapter + base + text encoder together

Each DiT stage starts from the previous stage's `runs/<stage>/model` and uses the VAE of
`runs/shapes-vae-frames/model`. The measurements behind every choice are in
docs/experiments/shapes-default-model.md; the recipe as a card in docs/model-card.md.
"""

from __future__ import annotations

import dataclasses

from tubelet.data.dataset import Bucket, DataConfig
from tubelet.diffusion.flow import FlowConfig
from tubelet.models.dit import DiTConfig
from tubelet.recipes.shapes.text import SHAPES_TEXT_PRESETS, ShapesTextConfig
from tubelet.train.config import BoxTrainConfig, OptimConfig, SampleConfig, TrainConfig

__all__ = [
    "COMMANDS",
    "DIT_PRESETS",
    "STAGE_INPUTS",
    "TEXT_PRESETS",
    "TRAIN_PRESETS",
    "model_dir",
    "register",
]

# ---- the models ---------------------------------------------------------------------------

DIT_PRESETS: dict[str, DiTConfig] = {
    # The default model's DiT, on the frame VAE's 16 x 8 x 8 x 8 latents: (4, 2, 2) patches -> 64
    # tokens of 128 values (an object moves ~1 latent pixel within a token, so its direction is part
    # of the token's content), a 3 x 3 x 3 depthwise token convolution in every block.
    "shapes-latent-conv": DiTConfig(
        dim=256,
        num_heads=4,
        num_layers=8,
        ffn_dim=1024,
        text_dim=256,
        in_channels=8,
        out_channels=8,
        patch_size=(4, 2, 2),
        embed_init="xavier",
        pooled_text=True,
        conv_kernel=3,
    ),
}


# `text_encoder: shapes` (the default model's) and `shapes-tiny` (tests).
TEXT_PRESETS: dict[str, ShapesTextConfig] = dict(SHAPES_TEXT_PRESETS)

# ---- the layout ---------------------------------------------------------------------------

DATA = "data/shapes"
DATA_20K = "data/shapes-20k"
DATA_25K = "data/shapes-25k"
CACHE = "cache/shapes-frames"
CACHE_20K = "cache/shapes-frames-20k"
CACHE_25K = "cache/shapes-frames-25k"
DATA_BOXES = "data/shapes-boxes"  # half the clips with motion text cannot say (--free-motion 0.5)
CACHE_BOXES = "cache/shapes-boxes"
# the held-out combinations, tubelet/recipes/shapes/suites/shapes-holdout.json (`--holdout NAME`)
HOLDOUT = "shapes-holdout"


def run_dir(stage: str) -> str:
    """The run directory of a stage preset."""
    return f"runs/{stage}"


def model_dir(stage: str) -> str:
    """The model directory a stage's run exports (what the next stage reads)."""
    return f"runs/{stage}/model"


VAE = model_dir("shapes-vae-frames")


def _data_cmd(out: str, num: int, workers: int) -> str:
    return (
        f"tubelet data shapes --out {out} --num {num} --seed 1000 --frames 16 --workers {workers} "
        f"--holdout {HOLDOUT}"
    )


def _cache_cmd(data: str, out: str, extra: str) -> str:
    return f"tubelet data cache {data} --model {VAE} --preset shapes-t2v-frames --out {out} {extra}"


# ---- the stages ---------------------------------------------------------------------------

_SAMPLE_PROMPTS = [
    "a red circle moving right",
    "a big blue square moving up and a small yellow triangle staying still, on a white background",
    "一个绿色三角形向左移动",
    "一个小的紫色圆形向下移动和一个橙色正方形向右移动，黑色背景",
]


def _clips(batch: int) -> DataConfig:
    """16 x 64 x 64 clips at 8 fps, one bucket."""
    return DataConfig(fps=8.0, buckets=[Bucket(16, 64, 64, batch)], num_workers=1, random_start=False)


def _cosine(lr: float, warmup: int) -> OptimConfig:
    return OptimConfig(lr=lr, warmup_steps=warmup, schedule="cosine", min_lr_ratio=0.05, grad_clip=1.0)


def _dit_stage(
    name: str,
    *,
    cache: str,
    init_from: str | None,
    data: DataConfig,
    flow: FlowConfig,
    optim: OptimConfig,
    max_steps: int,
    log_every: int = 20,
    save_every: int = 250,
) -> TrainConfig:
    """A DiT stage: `shapes-latent-conv` + `ShapesTextEncoder` (trained jointly) on a latent cache of
    the frame VAE, EMA 0.999, sample clips every 1000 steps."""
    return TrainConfig(
        task="dit",
        dit="shapes-latent-conv",
        # The shapes-world prompt encoder: one token per object (its colour, shape, size and motion)
        # and one for the scene; with the byte encoder the prompt never reached the objects.
        text_encoder="shapes",
        vae_path=VAE,
        init_from=init_from,
        data=data,
        cache=cache,
        flow=flow,
        optim=optim,
        ema_decay=0.999,
        max_steps=max_steps,
        log_every=log_every,
        save_every=save_every,
        samples=SampleConfig(every=1000, prompts=list(_SAMPLE_PROMPTS), steps=20, guidance_scale=4.0),
        out_dir=run_dir(name),
    )


TRAIN_PRESETS: dict[str, TrainConfig] = {
    # The VAE: frame by frame (time kernel 1, no temporal compression: an image autoencoder
    # applied to each frame, so training on single frames is exact for whole clips), base 32,
    # z_dim 8, x8 spatial; L1 on object pixels (off the clip's dominant colour) weighted 1 + 10.
    # Trained on a random single frame of each clip; lr >= 3e-4 was unstable for this VAE family.
    "shapes-vae-frames": TrainConfig(
        task="vae",
        vae={
            "base_dim": 32,
            "z_dim": 8,
            "dim_mult": [1, 2, 2, 2],
            "num_res_blocks": 1,
            "temporal_downsample": [False, False, False],
            "time_kernel": 1,
        },
        data=DataConfig(fps=8.0, buckets=[Bucket(1, 64, 64, 32)], num_workers=1, random_start=True),
        data_dir=DATA,
        recon_foreground_weight=10.0,
        optim=OptimConfig(lr=2e-4, warmup_steps=100, schedule="cosine", min_lr_ratio=0.1, grad_clip=1.0),
        kl_weight=1e-4,
        ema_decay=0.998,
        precision="fp32",  # the VAE's convolutions use oneDNN directly in float32 on the CPU
        max_steps=2500,
        log_every=10,
        save_every=200,
        samples=SampleConfig(every=1000),
        out_dir=run_dir("shapes-vae-frames"),
    ),
    # DiT stage 1: from scratch on the cached latents (64 tokens per clip), shift 5.
    "shapes-t2v-frames": _dit_stage(
        "shapes-t2v-frames",
        cache=CACHE,
        init_from=None,
        data=_clips(32),
        flow=FlowConfig(caption_dropout=0.1, shift=5.0, logit_std=1.2),
        optim=_cosine(5e-4, 150),
        max_steps=5000,
    ),
    # DiT stage 2: 2500 more steps at a lower learning rate.
    "shapes-t2v-frames-ft": _dit_stage(
        "shapes-t2v-frames-ft",
        cache=CACHE,
        init_from=model_dir("shapes-t2v-frames"),
        data=_clips(32),
        flow=FlowConfig(caption_dropout=0.1, shift=5.0, logit_std=1.2),
        optim=_cosine(2e-4, 50),
        max_steps=2500,
    ),
    # DiT stage 3, on a GPU: batch 256 on more clips (20,000 seeds); on one H100 beside another training
    # (`scripts/train_on_gpu.sh`): 931 steps in 5.5 min.
    "shapes-t2v-frames-big": _dit_stage(
        "shapes-t2v-frames-big",
        cache=CACHE_20K,
        init_from=model_dir("shapes-t2v-frames-ft"),
        data=_clips(256),
        flow=FlowConfig(caption_dropout=0.1, shift=5.0, logit_std=1.2),
        optim=_cosine(3e-4, 50),
        max_steps=931,
    ),
    # DiT stage 4: the low noise levels, where the shapes' edges are drawn: half of each batch draws its
    # noise level with shift 1 instead of 5 (with shift 5 alone only ~3% of the training noise levels
    # are below s = 0.36, and the model rounded true squares when asked to finish them from there).
    # Sampling keeps shift 5.
    "shapes-t2v-frames-detail": _dit_stage(
        "shapes-t2v-frames-detail",
        cache=CACHE,
        init_from=model_dir("shapes-t2v-frames-big"),
        data=_clips(64),
        flow=FlowConfig(caption_dropout=0.1, shift=5.0, logit_std=1.2, shift_mix=[5.0, 1.0]),
        optim=_cosine(1.5e-4, 50),
        max_steps=2000,
    ),
    # DiT stage 5, on a GPU: stage 4's noise mix at batch 256 on 25,000 seeds, 2,847 steps: the shipped
    # run's length (~5.2 min on one H100 beside another run; `scripts/train_on_gpu.sh` sizes max_steps
    # to another budget from a throughput probe, e.g. `--set max_steps=...`).
    "shapes-t2v-frames-gpu": _dit_stage(
        "shapes-t2v-frames-gpu",
        cache=CACHE_25K,
        init_from=model_dir("shapes-t2v-frames-detail"),
        data=_clips(256),
        flow=FlowConfig(caption_dropout=0.1, shift=5.0, logit_std=1.2, shift_mix=[5.0, 1.0]),
        optim=_cosine(2e-4, 100),
        max_steps=2847,
        log_every=50,
        save_every=1000,
    ),
    # Box control (issue 17): a BoxAdapter on the stage-5 model, base and text encoder frozen (the
    # Boximator recipe), on clips of which half move as text cannot say; the boxes come with the
    # cache. CPU-sized: batch 64.
    "shapes-t2v-boxes": dataclasses.replace(
        _dit_stage(
            "shapes-t2v-boxes",
            cache=CACHE_BOXES,
            init_from=model_dir("shapes-t2v-frames-gpu"),
            data=_clips(64),
            flow=FlowConfig(caption_dropout=0.1, shift=5.0, logit_std=1.2, shift_mix=[5.0, 1.0]),
            optim=_cosine(5e-4, 100),
            max_steps=2500,
            log_every=50,
            save_every=500,
        ),
        boxes=BoxTrainConfig(),
    ),
    # Box control, stage 2: the adapter of stage 1 and the base DiT + text encoder trained together at a
    # lower learning rate (the frozen base placed objects only to ~0.5 IoU); one clip in five still
    # trains text-only, so prompts without boxes keep working.
    "shapes-t2v-boxes-joint": dataclasses.replace(
        _dit_stage(
            "shapes-t2v-boxes-joint",
            cache=CACHE_BOXES,
            init_from=model_dir("shapes-t2v-boxes"),
            data=_clips(64),
            flow=FlowConfig(caption_dropout=0.1, shift=5.0, logit_std=1.2, shift_mix=[5.0, 1.0]),
            optim=_cosine(1e-4, 100),
            max_steps=2000,
            log_every=50,
            save_every=250,
        ),
        boxes=BoxTrainConfig(freeze_base=False),
    ),
}

# Every input a stage reads -> the command that makes it (run from the layout's directory).
STAGE_INPUTS: dict[str, str] = {
    DATA: _data_cmd(DATA, 12000, 2),
    DATA_20K: _data_cmd(DATA_20K, 20000, 16),
    DATA_25K: _data_cmd(DATA_25K, 25000, 16),
    CACHE: _cache_cmd(DATA, CACHE, "--batch-size 16"),
    CACHE_20K: _cache_cmd(DATA_20K, CACHE_20K, "--workers 16 --batch-size 256"),
    CACHE_25K: _cache_cmd(DATA_25K, CACHE_25K, "--workers 16 --batch-size 256"),
    DATA_BOXES: (
        f"tubelet data shapes --out {DATA_BOXES} --num 8000 --seed 2000 --frames 16 --workers 2 "
        f"--holdout {HOLDOUT} --free-motion 0.5"
    ),
    CACHE_BOXES: _cache_cmd(DATA_BOXES, CACHE_BOXES, "--batch-size 32"),
    **{model_dir(name): f"tubelet train --preset {name}" for name in TRAIN_PRESETS},
}

# The whole recipe, in order (the GPU stages' data and caches right before them).
COMMANDS: list[str] = [
    STAGE_INPUTS[DATA],
    "tubelet train --preset shapes-vae-frames",
    STAGE_INPUTS[CACHE],
    "tubelet train --preset shapes-t2v-frames",
    "tubelet train --preset shapes-t2v-frames-ft",
    STAGE_INPUTS[DATA_20K],
    STAGE_INPUTS[CACHE_20K],
    "tubelet train --preset shapes-t2v-frames-big",
    "tubelet train --preset shapes-t2v-frames-detail",
    STAGE_INPUTS[DATA_25K],
    STAGE_INPUTS[CACHE_25K],
    "tubelet train --preset shapes-t2v-frames-gpu --set max_steps=2847",
    STAGE_INPUTS[DATA_BOXES],
    STAGE_INPUTS[CACHE_BOXES],
    "tubelet train --preset shapes-t2v-boxes",
    "tubelet train --preset shapes-t2v-boxes-joint",
]


def register() -> None:
    """Add the recipe's parts to the engine's registries (see `tubelet.registry`)."""
    from tubelet import registry
    from tubelet.recipes.shapes.dimension import ShapesOracle
    from tubelet.recipes.shapes.text import ShapesTextEncoder

    registry.register_class("text_encoder", ShapesTextEncoder)
    for name, cfg in TEXT_PRESETS.items():
        registry.register("text_encoder_preset", name, cfg)
    for name, dcfg in DIT_PRESETS.items():
        registry.register("dit_preset", name, dcfg)
    for name, tcfg in TRAIN_PRESETS.items():
        registry.register("train_preset", name, tcfg)
    for path, command in STAGE_INPUTS.items():
        registry.register("stage_input", path, command)
    registry.register("eval_dimension", ShapesOracle.name, ShapesOracle)

"""What is trained: the text-to-video denoiser (task "dit") or the causal video VAE (task "vae").

A task builds its modules from the `TrainConfig`, turns a batch into a loss, writes sample clips
and exports the final model directory. The training loop (`trainer.py`) is shared.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from tubelet.data.loader import Batch
from tubelet.diffusion.cond import Cond
from tubelet.errors import ConfigError
from tubelet.kernels import apply_cpu_kernels
from tubelet.media import frames_to_unit, unit_to_frames
from tubelet.models.codec import LatentCodec
from tubelet.train.config import TrainConfig

if TYPE_CHECKING:
    from tubelet.models.vae import CausalVideoVAE


def _preset(value: Any, kind: str, cls: type, what: str) -> Any:
    """A component config from a preset name (engine or recipe, via `tubelet.registry`), a mapping
    (strictly checked) or a config."""
    from tubelet import registry
    from tubelet.config import config_from_dict

    if isinstance(value, str):
        return dataclasses.replace(registry.lookup(kind, value))
    if isinstance(value, dict):
        return config_from_dict(cls, value, where=what)
    if isinstance(value, cls):
        return value
    raise ConfigError(f"{what}: expected a preset name or a mapping, got {value!r}")


def batch_video(batch: Batch, device: torch.device) -> torch.Tensor:
    """A batch's clips as float32 (B, 3, F, H, W) in [-1, 1] on `device`: decoded videos, or the uint8
    frames of a pixel cache (moved as uint8, a quarter of the bytes, and converted on the device)."""
    if "pixels" in batch:
        return frames_to_unit(batch["pixels"].to(device, non_blocking=True))
    return batch["video"].to(device, torch.float32)


def init_weights(module: nn.Module, path: Path) -> None:
    """Load `path` into `module` to fine-tune it, in the module's own dtypes: an exported model may be
    stored in float16, but training keeps float32 weights (autocast does the low-precision math)."""
    from tubelet.models.hub import assign_state_dict, load_safetensors

    own = module.state_dict()
    state = {
        k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v
        for k, v in load_safetensors(path).items()
    }
    assign_state_dict(module, state, str(path.parent))


class TextToVideoModel(nn.Module):
    """The trainable part of a text-to-video model: the DiT (+ a text encoder trained jointly).

    forward(x, t, cond): a `Cond` with `text_ids` (B, L) token ids is encoded by `text` first (the
    DiT then gets a `Cond` with `context`); a `Cond` with `context` goes to the DiT unchanged.
    """

    def __init__(self, dit: nn.Module, text: nn.Module | None) -> None:
        super().__init__()
        self.dit: Any = dit
        self.text: Any = text

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        if cond.text_ids is not None:
            if self.text is None:
                raise ValueError("Cond.text_ids given, but this model has no jointly trained text encoder")
            context = self.text(cond.text_ids, cond.context_mask)  # (B, L) ids -> (B, L, D)
            cond = cond.replace(context=context, text_ids=None)
        return self.dit(x, t, cond)


UNCOND_FILE = "uncond.safetensors"  # in a latent cache: the empty prompt's frozen text embedding


def _cached_uncond(cache: str | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(context (1, L, D), mask (1, L)) of the empty prompt stored in a latent cache, if any."""
    if not cache or not (Path(cache) / UNCOND_FILE).is_file():
        return None
    from tubelet.models.hub import load_safetensors

    t = load_safetensors(Path(cache) / UNCOND_FILE)
    return t["context"], t["mask"].bool()


def _is_frozen_encoder_dir(d: Path) -> bool:
    from tubelet.models.hub import read_config_json

    return read_config_json(d).get("_class") == "HFTextEncoder"  # never trained jointly


def resolve_from_init(cfg: TrainConfig) -> TrainConfig:
    """`dit`, `text_encoder` and `vae_path` given as ``"init_from"`` name the components of the
    `init_from` pipeline directory (its transformer's config, its text encoder, its VAE): a
    fine-tune of a converted Wan2.1 pipeline names the directory once."""
    names = [n for n in ("dit", "text_encoder", "vae_path") if getattr(cfg, n) == "init_from"]
    if not names:
        return cfg
    if not cfg.init_from:
        raise ConfigError(f"{names[0]}: init_from names the init_from pipeline directory; set init_from")
    from tubelet.config import config_to_dict
    from tubelet.errors import ModelLoadError
    from tubelet.models.dit import VideoDiT

    d = Path(cfg.init_from)
    changes: dict[str, Any] = {}
    for name, sub in (("dit", "transformer"), ("text_encoder", "text_encoder"), ("vae_path", "vae")):
        if getattr(cfg, name) != "init_from":
            continue
        if not (d / sub / "config.json").is_file():
            raise ConfigError(
                f"{name}: init_from: {d} has no {sub}/config.json (expected a pipeline directory)"
            )
        if name == "dit":
            try:
                changes[name] = config_to_dict(VideoDiT.config_from_directory(d / sub))
            except ModelLoadError as e:
                raise ConfigError(f"dit: init_from: {e}") from None
        else:
            changes[name] = str(d / sub)
    return dataclasses.replace(cfg, **changes)


class DiTTask:
    """Rectified-flow training of a VideoDiT (+ byte text encoder) on VAE latents or pixels."""

    name = "dit"

    def __init__(self, cfg: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        from tubelet import registry
        from tubelet.models.dit import DiTConfig, VideoDiT
        from tubelet.models.text import build_text_encoder, jointly_trainable, load_text_encoder
        from tubelet.models.vae import CausalVideoVAE

        cfg = resolve_from_init(cfg)
        self.cfg = cfg
        self.device = device
        self.rank, self.world_size = rank, world_size
        # Frozen VAE (or pixel space).
        self.vae: Any = None
        if cfg.vae_path:
            self.vae = CausalVideoVAE.from_pretrained(cfg.vae_path).to(device).eval().requires_grad_(False)
            if device.type == "cpu":
                apply_cpu_kernels(self.vae)
        channels = self.vae.config.z_dim if self.vae is not None else 3
        # Text encoder: a preset or config mapping (a fresh encoder, trained jointly; `_class` picks
        # the class, recipes' included) or a pretrained dir (frozen unless jointly trainable).
        te = cfg.text_encoder
        self._frozen_text: Any = None
        self._frozen_dim: int | None = None
        self.text_dir: Path | None = None
        self.cached_uncond: tuple[torch.Tensor, torch.Tensor] | None = None
        if isinstance(te, str) and registry.find("text_encoder_preset", te) is None:
            if not Path(te).exists():
                raise ConfigError(
                    f"unknown text_encoder preset {te!r} (and no such directory); available: "
                    f"{sorted(registry.names('text_encoder_preset'))}"
                )
            self.text_dir = Path(te)
            self.cached_uncond = _cached_uncond(cfg.cache)
            if self.cached_uncond is not None and _is_frozen_encoder_dir(Path(te)):
                # a latent cache holds every text embedding training needs (the empty prompt's too):
                # the (large) frozen encoder is loaded only if samples need it
                self._frozen_dim = int(self.cached_uncond[0].shape[-1])
            te = None
        if isinstance(self.text_dir, Path) and self._frozen_dim is None:
            enc = load_text_encoder(self.text_dir)
            if jointly_trainable(enc) and cfg.train_text_encoder:
                text: nn.Module | None = enc
            else:
                self._frozen_text = enc.to(device).eval().requires_grad_(False)
                text = None
        elif self.text_dir is not None:
            text = None
        else:
            text = build_text_encoder(te)
            if not cfg.train_text_encoder:
                raise ConfigError("train_text_encoder: false needs text_encoder to be a pretrained directory")
        text_dim = text.dim if text is not None else (self._frozen_dim or self.frozen_text.dim)
        dcfg = _preset(cfg.dit, "dit_preset", DiTConfig, "dit")
        if isinstance(cfg.dit, str):  # a preset adapts to the latent channels and text width
            dcfg = dataclasses.replace(dcfg, in_channels=channels, out_channels=channels, text_dim=text_dim)
        if dcfg.in_channels != channels or dcfg.text_dim != text_dim:
            raise ConfigError(
                f"dit: in_channels={dcfg.in_channels}, text_dim={dcfg.text_dim} but the latents have "
                f"{channels} channels and the text encoder width is {text_dim}"
            )
        trained_text = sum(p.numel() for p in text.parameters()) if text is not None else 0
        check_training_memory(lambda: VideoDiT(dcfg), device, "dit", extra_params=trained_text)
        dit: nn.Module = VideoDiT(dcfg)
        if cfg.boxes is not None:  # box control: an adapter on the DiT (tubelet.models.box_adapter)
            from tubelet.models.box_adapter import BoxAdapter, BoxAdapterConfig, BoxedDiT

            if cfg.boxes.freeze_base and not cfg.init_from:
                raise ConfigError(
                    "boxes.freeze_base trains the box adapter only: set init_from to the model to add box control "
                    "to (or boxes.freeze_base: false to train everything)"
                )
            try:
                acfg = BoxAdapterConfig.for_dit(dcfg, **cfg.boxes.adapter)
            except TypeError as e:
                raise ConfigError(f"boxes.adapter: {e}") from None
            dit = BoxedDiT(cast(Any, dit), BoxAdapter(acfg))
        self.model = TextToVideoModel(dit, text)
        if cfg.init_from:
            self._init_from(Path(cfg.init_from))
        if cfg.boxes is not None and cfg.boxes.freeze_base:  # the Boximator recipe: only the adapter learns
            self.model.dit.dit.requires_grad_(False)
            if self.model.text is not None:
                self.model.text.requires_grad_(False)
        if cfg.lora is not None:  # a LoRA fine-tune: the base frozen (bf16 when computing in bf16)
            from tubelet.models.lora import attach_lora
            from tubelet.train.trainer import autocast_dtype as _autocast_dtype

            self.model.requires_grad_(False)
            base_dtype = cfg.lora.base_dtype
            if base_dtype == "auto":
                base_dtype = "bfloat16" if _autocast_dtype(cfg, device) == torch.bfloat16 else "float32"
            elif base_dtype == "bfloat16" and _autocast_dtype(cfg, device) != torch.bfloat16:
                raise ConfigError(
                    "lora.base_dtype: bfloat16 needs precision: bf16 (the run computes in float32)"
                )
            self.model.to(getattr(torch, base_dtype))
            attach_lora(self.model.dit, cfg.lora.lora_config())  # float32, trainable
        self.model.to(device)
        self.codec = LatentCodec(self.vae)  # encode + the latent normalisation (identity in pixel space)
        check_bucket_shapes(cfg.data.bucket_list, self.codec, tuple(self.model.dit.config.patch_size))

    @property
    def frozen_text(self) -> Any:
        """The frozen pretrained text encoder (loaded on first use when a cache made it unnecessary)."""
        if self._frozen_text is None and self.text_dir is not None and self._frozen_dim is not None:
            from tubelet.models.text import load_text_encoder

            self._frozen_text = load_text_encoder(self.text_dir).to(self.device).eval().requires_grad_(False)
        return self._frozen_text

    def _init_from(self, d: Path) -> None:
        tdir = d / "transformer" if (d / "transformer").is_dir() else d
        base = self.model.dit.dit if self.cfg.boxes is not None else self.model.dit
        init_weights(base, tdir / "model.safetensors")
        if self.cfg.boxes is not None and (d / "box_adapter" / "model.safetensors").is_file():
            init_weights(self.model.dit.adapter, d / "box_adapter" / "model.safetensors")  # go on training it
        if self.model.text is not None and (d / "text_encoder" / "model.safetensors").is_file():
            init_weights(self.model.text, d / "text_encoder" / "model.safetensors")

    def submodules(self) -> list[nn.Module]:
        if self.cfg.boxes is not None:  # the base's blocks and the adapter's layers
            return [self.model.dit.dit, self.model.dit.adapter]
        return [self.model.dit]

    @torch.no_grad()
    def to_latents(self, batch: Batch) -> torch.Tensor:
        """(B, C, F', H', W') normalised latents for a batch of videos or cached (raw) latents."""
        if "latents" in batch:
            return self.codec.normalize(batch["latents"].to(self.device, torch.float32))
        return self.codec.encode(batch_video(batch, self.device))  # (B, 3, F, H, W) in [-1, 1]

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model.text is not None:
            ids, mask = self.model.text.tokenize(captions)
            return ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            emb = self.frozen_text.encode(captions)
        return emb.context.to(self.device, torch.float32), emb.mask.to(self.device)

    def _cached_text(self, batch: Batch, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen text embeddings from a latent cache; dropped captions get the empty prompt's."""
        ctx = batch["context"].to(self.device, torch.float32)  # (B, L, D)
        mask = batch["mask"].to(self.device)  # (B, L)
        dropped = [i for i, c in enumerate(captions) if c == "" and batch["caption"][i] != ""]
        if dropped:
            if self.cached_uncond is not None:  # the empty prompt's embedding, cached with the latents
                u_ctx, u_mask = (t.to(self.device) for t in self.cached_uncond)
                u_ctx = u_ctx.float()
            else:
                u_ctx, u_mask = self.encode_text([""])
            n = min(u_ctx.shape[1], ctx.shape[1])
            for i in dropped:
                ctx[i].zero_()
                mask[i] = False
                ctx[i, :n] = u_ctx[0, :n]
                mask[i, :n] = u_mask[0, :n]
        return ctx, mask

    def loss(self, wrapped: nn.Module, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        from tubelet.diffusion.flow import (
            drop_captions,
            flow_matching_loss,
            sample_known_frames,
            sample_timesteps,
        )

        x0 = self.to_latents(batch)
        b, c, f, h, w = x0.shape
        p = self.model.dit.config.patch_size
        tokens = (f // p[0]) * (h // p[1]) * (w // p[2])
        # Every rank draws the randomness of the whole global batch from the same generator and
        # keeps its slice, so N processes see exactly what one process with N times the batch sees.
        world, rank = self.world_size, self.rank
        lo, hi = rank * b, (rank + 1) * b
        noise = torch.randn((world * b, c, f, h, w), generator=generator, device=generator.device)[lo:hi]
        s = sample_timesteps(world * b, self.cfg.flow, generator, tokens)[lo:hi]
        keep = drop_captions(["x"] * (world * b), self.cfg.flow.caption_dropout, generator)[lo:hi]
        known = sample_known_frames(world * b, f, self.cfg.flow, generator)[lo:hi]
        captions = [cap if k else "" for cap, k in zip(batch["caption"], keep)]
        if "context" in batch and self.model.text is None:
            ctx, mask = self._cached_text(batch, captions)
        else:
            ctx, mask = self.encode_text(captions)
        if self.model.text is not None:  # token ids: the wrapper encodes them (trained jointly)
            cond = Cond(text_ids=ctx, context_mask=mask)
        else:
            cond = Cond(context=ctx, context_mask=mask)
        if known.any():
            cond = cond.replace(known_mask=known)
        if self.cfg.boxes is not None:
            cond = cond.replace(boxes=self._train_boxes(batch, f, generator))
        loss, _ = flow_matching_loss(
            wrapped, x0, cond, cfg=self.cfg.flow, num_tokens=tokens, noise=noise, s=s
        )
        return loss, {"tokens": b * tokens, "samples": b}

    def _train_boxes(self, batch: Batch, latent_frames: int, generator: torch.Generator) -> Any:
        """The batch's box tracks at the latent frames, after box dropout (`BoxTrainConfig`).

        Every draw is made for the whole global batch (and 16 track slots) from the shared generator
        and sliced, like the objective's, so N processes train as one.
        """
        from tubelet.boxes import MAX_TRACKS
        from tubelet.diffusion.cond import Boxes

        bc = self.cfg.boxes
        assert bc is not None
        src = batch.get("boxes")
        b = len(batch["caption"])
        if src is None:  # a dataset without boxes: every clip trains text-only
            src = {"boxes": torch.zeros(b, 0, 1, 4), "present": torch.zeros(b, 0, 1, dtype=torch.bool),
                   "hard": torch.zeros(b, 0, dtype=torch.bool), "objects": torch.zeros(b, 0, dtype=torch.long)}  # fmt: skip
        boxes, present = src["boxes"].float(), src["present"].bool()
        hard, objects = src["hard"].bool().clone(), src["objects"].long()
        n, t = boxes.shape[1], boxes.shape[2]
        tf = self.codec.temporal_factor
        idx = [0] + [min(t - 1, 1 + tf * (j - 1) + (tf - 1) // 2) for j in range(1, latent_frames)]
        boxes, present = boxes[:, :, idx].clone(), present[:, :, idx].clone()  # (B, N, F', ...)
        world, lo = self.world_size, self.rank * b
        g, dev = generator, generator.device

        def draw(*shape: int) -> torch.Tensor:
            return torch.rand((world * b, *shape), generator=g, device=dev)[lo : lo + b].cpu()

        u_all, u_track, u_first, u_soft = draw(), draw(MAX_TRACKS), draw(MAX_TRACKS), draw(MAX_TRACKS)
        u_frame, grow = draw(MAX_TRACKS, latent_frames), draw(MAX_TRACKS, 4)
        keep = (u_track[:, :n] >= bc.p_drop_track) & (u_all >= bc.p_drop_all)[:, None]  # (B, N)
        present &= keep[:, :, None]
        first_only = u_first[:, :n] < bc.p_first_only
        starts = present.float().argmax(-1, keepdim=True)  # the track's first present frame
        at_start = torch.zeros_like(present).scatter_(-1, starts, True)
        sparse = u_frame[:, :n, :latent_frames] >= bc.p_drop_frame
        sparse |= at_start  # a track keeps its first box
        present &= torch.where(first_only[:, :, None], at_start, sparse)
        soft = u_soft[:, :n] < bc.p_soft
        if soft.any():  # soft: the box grows towards the frame edges by a random fraction per side,
            gw = grow[:, :n] ** 2  # (B, N, 4); squared: tight regions as often as loose ones
            lo_xy, hi_xy = boxes[..., :2], boxes[..., 2:]
            grown = torch.cat(
                [lo_xy * (1 - gw[:, :, None, :2]), hi_xy + (1 - hi_xy) * gw[:, :, None, 2:]], -1
            )
            boxes = torch.where(soft[:, :, None, None], grown, boxes)
            hard &= ~soft
        return Boxes(boxes, present, hard, objects).to(self.device)

    def pipeline(self, model: TextToVideoModel):
        """A generation pipeline around (EMA) weights in `model`, for samples and export."""
        from tubelet.pipelines import PipelineConfig, TextToVideoPipeline

        text = model.text if model.text is not None else self.frozen_text
        bucket = max(self.cfg.data.bucket_list, key=lambda b: b.frames)
        pcfg = PipelineConfig(
            height=bucket.height,
            width=bucket.width,
            num_frames=bucket.frames,
            fps=self.cfg.data.fps,
            num_inference_steps=self.cfg.samples.steps,
            guidance_scale=self.cfg.samples.guidance_scale,
            sampler=self.cfg.samples.sampler,
            flow=dataclasses.asdict(self.cfg.flow),  # sampling takes its shift from here
        )
        dtype = next(model.dit.parameters()).dtype  # a LoRA run's base may be bfloat16
        return TextToVideoPipeline(
            model.dit, text, self.vae, pcfg, compute_dtype=dtype if dtype != torch.float32 else None
        )

    def write_samples(self, model: TextToVideoModel, out_dir: Path, step: int) -> list[Path]:
        prompts = self.cfg.samples.prompts
        if not prompts:
            return []
        pipe = self.pipeline(model)
        paths = []
        for i, prompt in enumerate(prompts):
            res = pipe(prompt, seed=self.cfg.samples.seed + i, progress=False)
            paths.append(res.save(out_dir / f"step-{step:07d}-{i:02d}.mp4"))
        return paths

    def export(self, model: TextToVideoModel, out: Path) -> Path:
        if self.cfg.lora is not None:  # the adapters only, in the formats the ecosystem loads
            from tubelet.models.lora import export_lora_dir

            return export_lora_dir(model.dit, out, base=str(self.cfg.init_from), rank=self.cfg.lora.rank)
        pipe = self.pipeline(model)
        pipe.save_pretrained(out, text_encoder_dir=self.text_dir)
        return out


def foreground_weights(video: torch.Tensor, weight: float, threshold: float = 0.1) -> torch.Tensor:
    """(B, 1, F, H, W) loss weights: 1 + `weight` where a pixel differs from its clip's per-channel
    median (the dominant colour) by more than `threshold` in any channel, else 1. For clips of small
    objects on flat backgrounds, which a VAE otherwise learns long after the background."""
    b, c = video.shape[:2]
    median = video.float().reshape(b, c, -1).median(dim=2).values  # (B, C)
    diff = (video.float() - median[:, :, None, None, None]).abs().amax(dim=1, keepdim=True)
    return 1.0 + weight * (diff > threshold).float()


class VAETask:
    """Causal video VAE training: L1 (or MSE) reconstruction + KL to N(0, I)."""

    name = "vae"

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        from tubelet.models.vae import CausalVideoVAE, VAEConfig

        self.cfg = cfg
        self.device = device
        vcfg = _preset(cfg.vae, "vae_preset", VAEConfig, "vae")
        check_training_memory(lambda: CausalVideoVAE(vcfg), device, "vae")
        vae = CausalVideoVAE(vcfg)
        # Start the posterior's log-variance at -4 (std 0.14) instead of 0: with the small KL weights
        # video VAEs use, a unit-variance posterior drowns the latents in noise and the decoder spends
        # its first thousands of steps reading noise (measured: 0.39 vs 0.09 L1 after 60 steps).
        with torch.no_grad():
            bias = vae.quant_conv.bias
            assert bias is not None  # nn.Conv3d has a bias by default
            bias[vcfg.z_dim :] = -4.0
        if cfg.init_from:
            d = Path(cfg.init_from)
            d = d / "vae" if (d / "vae").is_dir() else d
            init_weights(vae, d / "model.safetensors")
        self.model = vae.to(device)
        if device.type == "cpu":  # oneDNN convolutions (the dispatcher's batch-1 path is far slower)
            apply_cpu_kernels(self.model)
        self._fixed: torch.Tensor | None = None

    def submodules(self) -> list[nn.Module]:
        return []

    def loss(self, wrapped: nn.Module, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        from tubelet.models.vae import gaussian_kl

        video = batch_video(batch, self.device)  # (B, 3, F, H, W)
        if self._fixed is None:
            self._fixed = video[:2].detach().cpu()
        recon, mean, logvar = wrapped(video, sample_posterior=True, generator=generator)
        diff = recon.float() - video
        err = diff.abs() if self.cfg.recon_loss == "l1" else diff.square()  # (B, 3, F, H, W)
        if self.cfg.recon_foreground_weight > 0:
            fw = foreground_weights(video, self.cfg.recon_foreground_weight)  # (B, 1, F, H, W)
            rec = ((err * fw).flatten(1).sum(1) / (fw.flatten(1).sum(1) * err.shape[1])).mean()
        else:
            rec = err.mean()
        kl = gaussian_kl(mean.float(), logvar.float()).mean() / video[0].numel()
        loss = rec + self.cfg.kl_weight * kl
        b, _, f, h, w = video.shape
        return loss, {"tokens": b * f * h * w, "samples": b, "rec": rec.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def write_samples(self, model: CausalVideoVAE, out_dir: Path, step: int) -> list[Path]:
        from tubelet.media import write_video

        if self._fixed is None:
            return []
        video = self._fixed.to(self.device)
        recon = model.decode(model.encode(video)).clamp(-1, 1)
        pair = torch.cat([video, recon], dim=-1)  # side by side: input | reconstruction
        paths = []
        for i in range(pair.shape[0]):
            frames = unit_to_frames(pair[i].permute(1, 2, 3, 0)).cpu().numpy()  # (T, H, W, 3) uint8
            paths.append(
                write_video(
                    out_dir / f"step-{step:07d}-{i:02d}.mp4", frames, self.cfg.data.fps, sidecar=False
                )
            )
        return paths

    @torch.no_grad()
    def export(self, model: CausalVideoVAE, out: Path, batches: list[torch.Tensor] | None = None) -> Path:
        """Save the VAE with per-channel latent mean/std measured on `batches` (the pipeline's normalisation)."""
        if batches:
            zs = torch.cat(
                [model.encode(b.to(self.device)).float().transpose(0, 1).flatten(1) for b in batches], 1
            )
            model.config = dataclasses.replace(
                model.config,
                latents_mean=tuple(zs.mean(1).tolist()),
                latents_std=tuple(zs.std(1).clamp_min(1e-4).tolist()),
            )
        model.save_pretrained(out)
        return out


# fp32 weights + gradients + AdamW's two moments + the EMA copy, per trained parameter
BYTES_PER_TRAINED_PARAM = 20


def check_bucket_shapes(buckets: list[Any], codec: Any, patch: tuple[int, ...]) -> None:
    """ConfigError naming the first bucket whose clips the VAE and the DiT's patches cannot take
    (frames 1 + tf*k with a whole number of temporal patches; sizes in whole spatial patches), with
    the nearest shapes that work."""
    tf, sf = codec.temporal_factor, codec.spatial_factor
    pt, ph, pw = patch
    for i, b in enumerate(buckets):
        where = f"data.buckets[{i}] ({b.frames}x{b.height}x{b.width})"
        frames_ok = (b.frames - 1) % tf == 0 and codec.latent_frames(b.frames) % pt == 0
        if not frames_ok:
            good = [
                f
                for f in range(1, 4 * b.frames + 8)
                if (f - 1) % tf == 0 and codec.latent_frames(f) % pt == 0
            ]
            near = sorted(good, key=lambda f: (abs(f - b.frames), f))[:2]
            raise ConfigError(
                f"{where}: frames must be 1 + {tf}k with a multiple of {pt} latent frames for this VAE and DiT; "
                f"nearest: {' or '.join(str(f) for f in sorted(near))}"
            )
        for name, size, p in (("height", b.height, ph), ("width", b.width, pw)):
            step = sf * p
            if size % step:
                lo = max(step, size // step * step)
                raise ConfigError(
                    f"{where}: {name} must be a multiple of {step}; nearest: {lo} or {lo + step}"
                )


def check_training_memory(build: Any, device: torch.device, key: str, *, extra_params: int = 0) -> None:
    """Refuse (before allocating) a model whose training state cannot fit `device`'s free memory.

    `build()` is run on the meta device (no memory) to count the parameters; activations come on
    top, so passing this check does not promise the run fits.
    """
    from tubelet.devices import check_memory

    with torch.device("meta"):
        n = sum(p.numel() for p in build().parameters()) + extra_params
    check_memory(
        n * BYTES_PER_TRAINED_PARAM,
        device,
        f"training a {n / 1e9:,.1f}B-parameter model (weights, gradients, AdamW state, EMA)"
        if n >= 1e9
        else f"training a {n / 1e6:,.0f}M-parameter model (weights, gradients, AdamW state, EMA)",
        lower=f"the model size ({key}: dim, num_layers, ...)",
    )


def build_task(
    cfg: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1
) -> DiTTask | VAETask:
    if cfg.task == "dit":
        return DiTTask(cfg, device, rank, world_size)
    if cfg.task == "vae":
        return VAETask(cfg, device)
    raise ConfigError(f"unknown task {cfg.task!r}; expected 'dit' or 'vae'")

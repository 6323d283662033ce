"""Text-to-video generation: prompt -> text encoder -> flow sampler over DiT -> VAE decode -> frames.

    from tubelet import TextToVideoPipeline
    pipe = TextToVideoPipeline.from_pretrained()          # the embedded default, or a model directory
    out = pipe("a red circle moving right", seed=0)
    out.frames   # numpy uint8 (T, H, W, 3)
    out.save("clip.mp4")                                   # mp4 + sidecar json with every setting

A pipeline directory holds one subfolder per component plus its own `config.json`
(`PipelineConfig`: default size, frames, fps, steps, guidance, sampler, shift, latent mean/std)::

    transformer/   VideoDiT            config.json + model.safetensors
    text_encoder/  ByteTextEncoder or HFTextEncoder (see tubelet.models.text)
    vae/           CausalVideoVAE      (absent for a pixel-space model)
    config.json    {"_class": "TextToVideoPipeline", ...}
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tubelet.config import config_from_dict, config_to_dict
from tubelet.errors import ConfigError, ModelLoadError, TubeletError
from tubelet.models.hub import read_config_json

DEFAULT_MODEL_NAME = "shapes-t2v"


def default_model_dir() -> Path:
    """Where the embedded default model lives inside the package."""
    return Path(__file__).parent / "assets" / DEFAULT_MODEL_NAME


@dataclass
class PipelineConfig:
    """Generation defaults stored with a model (every call may override them)."""

    height: int = 64
    width: int = 64
    num_frames: int = 17
    fps: float = 8.0
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    sampler: str = "unipc"
    shift: float | None = None  # None: the resolution-aware shift of `flow`
    negative_prompt: str = ""
    latents_mean: list[float] | None = None  # None: taken from the VAE config (or identity)
    latents_std: list[float] | None = None
    vae_scale_factor_spatial: int = 8
    vae_scale_factor_temporal: int = 4
    flow: dict[str, Any] | None = None  # the FlowConfig the model was trained with
    name: str = ""


@dataclass
class VideoResult:
    """One generated clip: frames (T, H, W, 3) uint8, fps and the settings that made it."""

    frames: np.ndarray
    fps: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write mp4 (or gif) with the settings in the container metadata and a sidecar json."""
        from tubelet.io import write_video

        return write_video(path, self.frames, self.fps, metadata=self.metadata)


class TextToVideoPipeline:
    """Generation around a VideoDiT, a text encoder and (optionally) a causal VAE."""

    def __init__(
        self,
        transformer: nn.Module,
        text_encoder: nn.Module,
        vae: nn.Module | None,
        config: PipelineConfig | None = None,
        *,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        self.transformer = transformer.eval()
        self.text_encoder = text_encoder.eval()
        self.vae = vae.eval() if vae is not None else None
        self.config = config or PipelineConfig()
        self.compute_dtype = compute_dtype
        self.source = ""

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> TextToVideoPipeline:
        """Load a pipeline directory (default: the model embedded in the package)."""
        from tubelet.models.dit import VideoDiT
        from tubelet.models.text import load_text_encoder
        from tubelet.models.vae import CausalVideoVAE

        d = Path(directory) if directory is not None else default_model_dir()
        if directory is None and not (d / "config.json").is_file():
            raise ModelLoadError(
                f"the embedded default model is missing ({d}); reinstall tubelet or pass a model directory"
            )
        raw = read_config_json(d)
        kind = raw.pop("_class", "TextToVideoPipeline")
        if kind != "TextToVideoPipeline":
            raise ModelLoadError(
                f"{d}: holds a {kind}, not a pipeline (expected transformer/, text_encoder/, vae/)"
            )
        for sub in ("transformer", "text_encoder"):
            if not (d / sub).is_dir():
                raise ModelLoadError(f"{d}: missing the {sub}/ folder of a pipeline directory")
        try:
            cfg = config_from_dict(PipelineConfig, raw, where=str(d / "config.json"))
        except ConfigError as e:
            raise ModelLoadError(str(e)) from None
        transformer = VideoDiT.from_pretrained(d / "transformer", device=device)
        text = load_text_encoder(d / "text_encoder", device=device)
        vae = CausalVideoVAE.from_pretrained(d / "vae", device=device) if (d / "vae").is_dir() else None
        pipe = cls(transformer, text, vae, cfg, compute_dtype=dtype)
        pipe.source = str(d)
        return pipe

    def save_pretrained(self, directory: str | Path, *, text_encoder_dir: str | Path | None = None) -> Path:
        """Write the pipeline directory (a frozen pretrained text encoder is copied from its dir)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(d / "transformer")
        if text_encoder_dir is not None:
            shutil.copytree(text_encoder_dir, d / "text_encoder", dirs_exist_ok=True)
        else:
            self.text_encoder.save_pretrained(d / "text_encoder")
        if self.vae is not None:
            self.vae.save_pretrained(d / "vae")
        cfg = {"_class": "TextToVideoPipeline", **config_to_dict(self.config)}
        tmp = d / "config.json.tmp"
        tmp.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, d / "config.json")
        return d

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def _latent_stats(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        mean, std = self.config.latents_mean, self.config.latents_std
        if (mean is None or std is None) and self.vae is not None:
            mean, std = self.vae.config.latents_mean, self.vae.config.latents_std
        if mean is None or std is None:
            return None
        dev = self.device
        return (
            torch.tensor(mean, device=dev).view(1, -1, 1, 1, 1),
            torch.tensor(std, device=dev).view(1, -1, 1, 1, 1),
        )

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F', H', W') of the latents for a clip, with clear errors for sizes the model can't make."""
        p = self.transformer.config.patch_size
        if self.vae is None:
            c, f, h, w = self.transformer.config.in_channels, num_frames, height, width
        else:
            sf, tf = self.vae.spatial_factor, self.vae.temporal_factor
            if num_frames < 1 or (num_frames - 1) % tf:
                ok = [1 + tf * k for k in range(1, 6)]
                raise TubeletError(f"num_frames={num_frames}: this model makes 1 + {tf}k frames, e.g. {ok}")
            c, f, h, w = self.vae.config.z_dim, 1 + (num_frames - 1) // tf, height // sf, width // sf
            if height % sf or width % sf:
                raise TubeletError(f"height and width must be multiples of {sf * p[1]}, got {height}x{width}")
        if h % p[1] or w % p[2] or h < 1 or w < 1:
            m = p[1] * (self.vae.spatial_factor if self.vae is not None else 1)
            raise TubeletError(f"height and width must be positive multiples of {m}, got {height}x{width}")
        return c, f, h, w

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.text_encoder.encode(prompts)
        return emb.context.to(self.device), emb.mask.to(self.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> video (B, 3, F, H, W) in [-1, 1]."""
        stats = self._latent_stats()
        if stats is not None:
            z = z * stats[1] + stats[0]
        video = self.vae.decode(z.float()) if self.vae is not None else z.float()
        return video.clamp(-1, 1)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, F, H, W) in [-1, 1] -> normalised latents."""
        z = self.vae.encode(video.to(self.device).float()) if self.vae is not None else video.float()
        stats = self._latent_stats()
        if stats is not None:
            z = (z - stats[0]) / stats[1]
        return z

    def shift_for(self, num_tokens: int) -> float:
        if self.config.shift is not None:
            return float(self.config.shift)
        from tubelet.diffusion.flow import FlowConfig, effective_shift

        flow = config_from_dict(FlowConfig, self.config.flow or {})
        return float(effective_shift(flow, num_tokens))

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        *,
        negative_prompt: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        progress: bool = True,
        known_latents: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
        start_latents: torch.Tensor | None = None,
        strength: float | None = None,
        extra_metadata: dict[str, Any] | None = None,
    ) -> VideoResult | list[VideoResult]:
        """Generate one clip per prompt (a list of prompts makes a batch, returned as a list).

        Same seed and settings give the same clip. `known_latents`/`known_mask` (B, F') keep latent
        frames fixed (image-to-video, extension, loops); `start_latents` + `strength` start from a
        partially noised clip (SDEdit editing).
        """
        from tubelet.diffusion.sampling import SAMPLERS, flow_schedule, make_velocity_fn, sdedit_start

        cfg = self.config
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise TubeletError("no prompt given")
        num_frames = num_frames or cfg.num_frames
        height = height or cfg.height
        width = width or cfg.width
        steps = num_inference_steps or cfg.num_inference_steps
        g = cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        sampler_name = sampler or cfg.sampler
        if sampler_name not in SAMPLERS:
            raise TubeletError(f"unknown sampler {sampler_name!r}; available: {sorted(SAMPLERS)}")
        if steps < 1:
            raise TubeletError(f"num_inference_steps must be >= 1, got {steps}")
        negative = cfg.negative_prompt if negative_prompt is None else negative_prompt
        if generator is None:
            if seed is None:
                seed = int(torch.randint(0, 2**31 - 1, ()).item())
            generator = torch.Generator().manual_seed(seed)
        c, f, h, w = self.latent_shape(num_frames, height, width)
        b = len(prompts)
        dev = self.device
        noise = torch.randn((b, c, f, h, w), generator=generator, dtype=torch.float32).to(dev)

        ctx, mask = self.encode_prompts(prompts)
        u_ctx = u_mask = None
        if g != 1.0:
            u_ctx, u_mask = self.encode_prompts([negative])
        p = self.transformer.config.patch_size
        tokens = (f // p[0]) * (h // p[1]) * (w // p[2])
        sigmas = flow_schedule(steps, self.shift_for(tokens))
        model = self._model_fn()
        fn = make_velocity_fn(model, ctx, mask, guidance_scale=g, uncond_context=u_ctx, uncond_mask=u_mask)
        x = noise
        if start_latents is not None:
            x, sigmas = sdedit_start(
                start_latents.to(dev), noise, 1.0 if strength is None else strength, sigmas
            )
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(sigmas) - 1, desc="generating", leave=False, dynamic_ncols=True)

        def on_step(i: int, n: int, xi: torch.Tensor) -> None:
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(i, n, xi)

        try:
            if len(sigmas) > 1:
                x = SAMPLERS[sampler_name](
                    fn, x, sigmas, known=known_latents, known_mask=known_mask, callback=on_step
                )
        finally:
            if bar is not None:
                bar.close()
        video = self.decode(x)  # (B, 3, F, H, W) in [-1, 1]
        frames = (
            ((video.permute(0, 2, 3, 4, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        )
        results = []
        for i, pr in enumerate(prompts):
            meta = {
                "prompt": pr,
                "negative_prompt": negative,
                "seed": seed if b == 1 else (None if seed is None else [seed, i]),
                "model": self.source or cfg.name,
                "num_frames": num_frames,
                "height": height,
                "width": width,
                "num_inference_steps": steps,
                "guidance_scale": g,
                "sampler": sampler_name,
                "shift": self.shift_for(tokens),
                "fps": cfg.fps,
                **(extra_metadata or {}),
            }
            results.append(VideoResult(frames[i], cfg.fps, meta))
        return results[0] if isinstance(prompt, str) else results

    def _model_fn(self) -> Callable[..., torch.Tensor]:
        dt = self.compute_dtype
        model = self.transformer
        if dt is None or dt == torch.float32:
            return model

        def run(
            x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor | None
        ) -> torch.Tensor:
            with torch.autocast(x.device.type, dtype=dt):
                return model(x, t, ctx, mask).float()

        return run

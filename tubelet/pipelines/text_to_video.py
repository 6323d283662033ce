"""`TextToVideoPipeline`: prompt -> text encoder -> flow sampler over the DiT -> latent codec -> frames.

    from tubelet.pipelines import GenerationRequest, load_pipeline
    pipe = load_pipeline()                                 # the embedded default, or a model directory
    out = pipe.generate(GenerationRequest("a red circle moving right", seed=0))
    out = pipe("a red circle moving right", seed=0)        # the same, as keywords
    out.frames   # numpy uint8 (T, H, W, 3)
    out.save("clip.mp4")                                   # mp4 + sidecar json with every setting

Conditioning (the tasks of Sora's report) all goes through ONE mechanism, the one the model is trained
with (`tubelet.diffusion.flow`): some latent frames are *known* (`Cond.known` / `Cond.known_mask`);
the sampler feeds them clean with noise level 0 and keeps them exactly, and the model fills in the rest::

    pipe.image_to_video(p, image)                  latent 0 = encode(image as a 1-frame clip)
    pipe.image_to_video(p, image, last_image=b)    ... and the last latent = still encoding of b
    pipe.extend(p, clip)                           known prefix = encode(the clip's last 1 + 4(k-1) frames)
    pipe.extend(p, clip, backward=True)            known suffix = still encoding of the clip's first 4k frames
    pipe.loop(p)                                   two passes: the clip leads back into its own first frame
    pipe.connect(p, a, b)                          prefix from a's tail + suffix from b's head
    pipe.edit(p, clip, strength=0.6)               SDEdit: noise the clip's latents, run the last 60% of steps

Latent frames and video frames (causal VAE, temporal factor tf = 4): latent 0 is video frame 0 encoded
alone (an image encodes exactly like frame 0 of a clip), latent j >= 1 is the group of frames
[1 + tf (j - 1), 1 + tf j). A pixel-space model has tf = 1 (a latent frame is a frame).

Still (group) encoding: a latent j >= 1 stands for tf frames that come *after* earlier frames, but a
clip's head or a last image has no past. `_encode_groups` encodes ``[first frame] + frames`` and drops
the first latent, i.e. the frames are encoded as if a still of their first frame came before them.
This is an approximation (the generated past differs), used for the last image, backward extension,
the head of the second clip of `connect`, and the closing frame of `loop`. The known latents are kept
exactly; the decoded pixels of known frames reproduce the input up to the VAE's reconstruction error.

Inputs are fitted to the output (`tubelet.pipelines.inputs`); each adjustment is reported once per
call to the call's `on_note` (default: a logging warning) and listed under "notes" in the result's
metadata, together with the task, the inputs (source, size, fps, frames at the model's fps), the
known latent frames and which output frames are new. The pipeline holds no per-call state.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from tubelet.boxes import tracks_to_dict
from tubelet.config import config_from_dict, config_to_dict
from tubelet.core.files import atomic_write_json
from tubelet.diffusion.cond import Cond
from tubelet.errors import ConfigError, TubeletError, check_choice
from tubelet.media import unit_to_frames
from tubelet.models.codec import LatentCodec
from tubelet.pipelines.inputs import Notes, load_clip, load_image, to_pixels
from tubelet.pipelines.loading import default_model_dir
from tubelet.pipelines.request import GenerationRequest


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
    # Sampling shift override; None (the default): the training objective's own (`flow`: its fixed
    # shift, or the resolution-aware one), so the shift is stored once.
    shift: float | None = None
    # Noise levels (tubelet.diffusion.sampling.flow_schedule): "uniform" (tubelet's models) or
    # "diffusers" (diffusers' flow-sigma schedule at integer timesteps: converted Wan models, so
    # that they make the same clips as diffusers' WanPipeline).
    schedule: str = "uniform"
    negative_prompt: str = ""
    latents_mean: list[float] | None = None  # None: taken from the VAE config (or identity)
    latents_std: list[float] | None = None
    vae_scale_factor_spatial: int = 8
    vae_scale_factor_temporal: int = 4
    flow: dict[str, Any] | None = None  # the FlowConfig the model was trained with
    name: str = ""
    # With box tracks and guidance: "joint" (guidance is over the text and the boxes together: the
    # unconditional branch has neither) or "text" (both branches follow the boxes; guidance is over
    # the text only). Measured in docs/box-control.md: joint follows the boxes much more closely.
    box_guidance: str = "joint"
    # Wan2.2 A14B (two experts, tubelet.models.experts): the switch point as a fraction of the 1000
    # training timesteps (steps at or above it run transformer/, the others transformer_2/), and the
    # low-noise expert's guidance scale (None: guidance_scale).
    boundary_ratio: float | None = None
    guidance_scale_2: float | None = None

    def __post_init__(self) -> None:
        from tubelet.diffusion.sampling import SCHEDULES

        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"PipelineConfig.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.boundary_ratio is not None and not 0.0 <= self.boundary_ratio <= 1.0:
            raise ConfigError(f"PipelineConfig.boundary_ratio must be in [0, 1], got {self.boundary_ratio!r}")
        if self.box_guidance not in ("joint", "text"):
            raise ConfigError(
                f"PipelineConfig.box_guidance must be 'joint' or 'text', got {self.box_guidance!r}"
            )


@dataclass
class VideoResult:
    """One generated clip: frames (T, H, W, 3) uint8, fps and the settings that made it.

    `latents` holds the sampled normalised latents (C, F', H', W') on the CPU (for `loop`, F' + u:
    the closing latent frames are sampled but not decoded); it is not written by `save`.
    """

    frames: np.ndarray
    fps: float
    metadata: dict[str, Any] = field(default_factory=dict)
    latents: torch.Tensor | None = None

    def save(self, path: str | Path) -> Path:
        """Write mp4 (or gif) with the settings in the container metadata and a sidecar json.

        The metadata also holds ``frames_sha256``, the SHA-256 of the generated uint8 frames before
        encoding: two runs made the same clip exactly when these agree, whatever the lossy
        encoder did with it."""
        import hashlib

        from tubelet.media import write_video

        digest = hashlib.sha256(np.ascontiguousarray(self.frames).tobytes()).hexdigest()
        return write_video(path, self.frames, self.fps, metadata={**self.metadata, "frames_sha256": digest})


class _Progress:
    """One tqdm bar over all sampling passes of a call (`passes` passes of equal length)."""

    def __init__(self, enabled: bool, passes: int = 1) -> None:
        self.enabled, self.passes = enabled, passes
        self.bar: Any = None

    def begin(self, steps: int) -> None:
        if self.enabled and self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=steps * self.passes, desc="generating", leave=False, dynamic_ncols=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Job:
    """The resolved settings of one generation call."""

    prompts: list[str]
    single: bool  # a single prompt string was given: return one result, not a list
    negative: str
    num_frames: int
    height: int
    width: int
    steps: int
    guidance: float
    sampler: str
    seed: int | list[int] | None
    generators: list[torch.Generator]  # one shared by the batch, or one per prompt
    on_note: Callable[[str], None] | None = None  # where input adjustments are reported
    extra_metadata: dict[str, Any] = field(default_factory=dict)  # added to every result's metadata
    text: tuple[Any, ...] | None = None  # encoded prompts, cached between passes
    boxes: list[Any] | None = None  # BoxTrack list (tubelet.boxes), checked against the clip
    keep: tuple[int, int] | None = None  # output frames [lo, hi) kept of num_frames (a fitted length)
    fit_note: str | None = None  # the note that says so
    cache: Any = None  # a StepCache (tubelet.diffusion.step_cache) or None
    cache_stats: list[Any] = field(default_factory=list)  # its CacheStats, one per sampling pass


class TextToVideoPipeline:
    """Generation around a VideoDiT, a text encoder and (optionally) a causal VAE.

    `__call__` is text-to-video; `image_to_video`, `extend`, `connect`, `loop` and `edit` are the
    conditioning tasks (module doc). All take the same generation keywords (seed, num_frames, height,
    width, num_inference_steps, guidance_scale, negative_prompt, sampler, generator, callback, progress)
    and return a `VideoResult` per prompt (a list for a list of prompts).
    """

    def __init__(
        self,
        transformer: nn.Module,
        text_encoder: nn.Module,
        vae: nn.Module | None,
        config: PipelineConfig | None = None,
        *,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        # Typed loosely (Any): any denoiser module with a `config` (patch_size, in_channels), any text
        # encoder with `encode`, any VAE with `encode`/`decode` and scale factors.
        self.transformer: Any = transformer.eval()
        self.text_encoder: Any = text_encoder.eval()
        self.vae: Any = vae.eval() if vae is not None else None
        self.config = config or PipelineConfig()
        # The one place that knows the latent normalisation (the pipeline config may override the VAE's).
        self.codec = LatentCodec(self.vae, mean=self.config.latents_mean, std=self.config.latents_std)
        self.compute_dtype = compute_dtype
        self.source = ""
        self.loras: list[dict[str, Any]] = []  # the LoRAs applied (load_lora), recorded in outputs
        # Offload (enable_offload): where each component lives between uses, and the device that runs them.
        self.offload: str | None = None
        self._offload: Any = None  # tubelet.pipelines.offload.ComponentOffload
        self._block_offload: Any = None  # tubelet.pipelines.offload.BlockOffload (of the first DiT)
        self._block_offloads: list[Any] = []  # one per DiT (two for Wan2.2's experts)
        self._exec_device: torch.device | None = None
        self._prefetch = 1
        self.quantized: dict[str, Any] | None = None  # quantize(): what was quantized, how
        self.compiled = False  # enable_compile()
        self.parallel: str | None = None  # enable_parallel(): "sequence" | "cfg" over torchrun's processes
        self._parallel: Any = None

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cpu_kernels: bool | None = None,
    ) -> TextToVideoPipeline:
        """Load a pipeline directory (default: the model embedded in the package); see `load_pipeline`."""
        from tubelet.pipelines.loading import load_components

        transformer, text, vae, cfg = load_components(directory, device=device, cpu_kernels=cpu_kernels)
        pipe = cls(transformer, text, vae, cfg, compute_dtype=dtype)
        pipe.source = str(directory) if directory is not None else str(default_model_dir())
        return pipe

    def save_pretrained(self, directory: str | Path, *, text_encoder_dir: str | Path | None = None) -> Path:
        """Write the pipeline directory (a frozen pretrained text encoder is copied from its dir)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        from tubelet.models.box_adapter import BoxedDiT
        from tubelet.models.experts import TwoExpertDiT

        if isinstance(self.transformer, BoxedDiT):  # the base and the adapter, each its own directory
            self.transformer.dit.save_pretrained(d / "transformer")
            self.transformer.adapter.save_pretrained(d / "box_adapter")
        elif isinstance(self.transformer, TwoExpertDiT):  # Wan2.2 A14B: high-noise, low-noise expert
            cast(Any, self.transformer.high).save_pretrained(d / "transformer")
            cast(Any, self.transformer.low).save_pretrained(d / "transformer_2")
        else:
            self.transformer.save_pretrained(d / "transformer")
        if text_encoder_dir is not None:
            shutil.copytree(text_encoder_dir, d / "text_encoder", dirs_exist_ok=True)
        else:
            self.text_encoder.save_pretrained(d / "text_encoder")
        if self.vae is not None:
            self.vae.save_pretrained(d / "vae")
        cfg = {"_class": "TextToVideoPipeline", **config_to_dict(self.config)}
        # Informational (loading reads the factors from the VAE): record the ones this pipeline has.
        cfg["vae_scale_factor_spatial"] = self.vae.spatial_factor if self.vae is not None else 1
        cfg["vae_scale_factor_temporal"] = self._tf
        atomic_write_json(d / "config.json", cfg)
        return d

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        """The device that runs the models (with offload, the weights rest on the CPU between uses)."""
        if self._exec_device is not None:
            return self._exec_device
        return next(self.transformer.parameters()).device

    # ------------------------------------------------------------------ offload
    def enable_offload(
        self, mode: str = "model", device: str | torch.device = "cuda", *, prefetch: int = 1
    ) -> TextToVideoPipeline:
        """Keep the weights in CPU memory and run on `device` (`tubelet.pipelines.offload`).

        mode "model": each component (text encoder, denoiser, VAE) is moved to `device` when used and
        back when another is; "blocks": the denoiser's blocks stream in one at a time (with `prefetch`
        blocks copied ahead on a side CUDA stream), the text encoder and the VAE as in "model".
        Exact: outputs equal those without offload. Returns self.
        """
        from tubelet.pipelines.offload import (
            OFFLOAD_MODES,
            BlockOffload,
            ComponentOffload,
            TensorGroup,
            _tensors,
            streamable_blocks,
        )

        check_choice("offload", mode, OFFLOAD_MODES)
        if mode == "blocks" and self.compiled:
            raise TubeletError("block offload does not combine with compile (use offload 'model')")
        self.disable_offload()
        dev = torch.device(device)
        experts = getattr(self.transformer, "experts", None)
        if mode == "model":
            dits: dict[str, Any] = (
                {"transformer": experts[0], "transformer_2": experts[1]}
                if experts
                else {"transformer": self.transformer}
            )
            self._offload = ComponentOffload(
                {"text_encoder": self.text_encoder, **dits, "vae": self.vae}, dev
            )
        else:
            # the text encoder streams its blocks too when it has them (umT5-XXL: 24 of 5.7B
            # parameters' 4.6B); its embeddings come in when it is used, like a component
            text: Any = self.text_encoder
            te_blocks = streamable_blocks(self.text_encoder)
            if te_blocks is not None:
                text = TensorGroup(self.text_encoder, te_blocks)
            self._offload = ComponentOffload({"text_encoder": text, "vae": self.vae}, dev)
            self._block_offloads = [BlockOffload(d.blocks, dev, prefetch=prefetch) for d in self._dits()]
            if te_blocks is not None:
                self._block_offloads.append(BlockOffload(te_blocks, dev, prefetch=prefetch))
            self._block_offload = self._block_offloads[0]
            in_blocks = {id(t) for d in self._dits() for b in d.blocks for _, _, t in _tensors(b)}
            for _, _, t in _tensors(self.transformer):  # the rest (embeddings, head, box adapter)
                if id(t) not in in_blocks:
                    t.data = t.data.to(dev)
        self.offload = mode
        self._exec_device = dev
        self._prefetch = prefetch
        return self

    @contextlib.contextmanager
    def _offload_paused(self) -> Iterator[None]:
        """Body with every component on the CPU and offload off; offload is then set up again (on
        the modules as they are then: a LoRA attached in the body is offloaded with its layer)."""
        if self.offload is None:
            yield
            return
        mode, dev, prefetch = self.offload, self._exec_device, self._prefetch
        assert dev is not None
        self.disable_offload("cpu")
        try:
            yield
        finally:
            self.enable_offload(mode, dev, prefetch=prefetch)

    def disable_offload(self, device: str | torch.device | None = None) -> TextToVideoPipeline:
        """Remove offload and put every component on `device` (default: the device that ran them)."""
        if self._exec_device is None:
            return self
        dev = torch.device(device) if device is not None else self._exec_device
        for bo in self._block_offloads:
            bo.remove()
        self._offload = self._block_offload = None
        self._block_offloads = []
        self.offload = None
        self._exec_device = None
        for m in (self.text_encoder, self.transformer, self.vae):
            if m is not None:
                m.to(dev)
        return self

    def runtime_metadata(self) -> dict[str, Any]:
        """How this pipeline runs its models (offload, quantization, compile), for the clip's sidecar."""
        out: dict[str, Any] = {}
        if self.compute_dtype not in (None, torch.float32):
            out["dtype"] = str(self.compute_dtype).removeprefix("torch.")
        if self.offload is not None:
            out["offload"] = self.offload
        if self.quantized is not None:
            out["quantize"] = dict(self.quantized)
        if self.compiled:
            out["compile"] = True
        if self.parallel is not None:
            out["parallel"] = {"mode": self.parallel, "processes": self._parallel.world}
        return out

    def enable_parallel(self, mode: str = "sequence", group: Any = None) -> TextToVideoPipeline:
        """Split each denoiser call over the processes of `group` (default: torchrun's whole world),
        `tubelet.train.sequence_parallel`: "sequence" (Ulysses: each process holds 1/P of the tokens)
        or "cfg" (each process one half of the guidance batch). Every process must make the same
        calls (same request, same seed). Returns self."""
        import torch.distributed as dist

        from tubelet.train.sequence_parallel import wrap_denoiser

        if not (dist.is_available() and dist.is_initialized()):
            raise TubeletError(
                "parallel generation needs a process group: launch with torchrun --nproc_per_node N"
            )
        self.disable_parallel()
        self._parallel = wrap_denoiser(self.transformer, mode, group)
        self.parallel = mode
        return self

    def disable_parallel(self) -> TextToVideoPipeline:
        if self._parallel is not None and hasattr(self._parallel, "remove"):
            self._parallel.remove()
        self._parallel, self.parallel = None, None
        return self

    # ------------------------------------------------------------------ quantization / compile
    def quantize(self, mode: str = "int8") -> TextToVideoPipeline:
        """Quantize the DiT blocks' weights (`tubelet.kernels.quant`: "int8" weight-only, or "fp8":
        fp8 matmuls on GPUs that have them, fp8 storage elsewhere). Not exact: the error is bounded
        and measured (docs/performance.md). LoRAs stay unquantized on top; `fuse_lora` is then
        refused. Returns self."""
        from tubelet.kernels.quant import quantize_blocks

        if self.quantized is not None:
            raise TubeletError(f"this pipeline is quantized already ({self.quantized['mode']})")
        target = self.device  # where it will run (offload: the device, not the CPU that stores it)
        with self._offload_paused():
            done = [quantize_blocks(d.blocks, mode, target) for d in self._dits()]
            self.quantized = {**done[0], "layers": sum(q["layers"] for q in done)}
        return self

    def enable_compile(self) -> TextToVideoPipeline:
        """`torch.compile` each DiT block (regional: one graph for all blocks; exact up to kernel
        rounding). The first clip pays the compilation (seconds); later clips of the same size reuse
        it. Not with block offload (its hooks move weights between calls). Returns self."""
        from tubelet.kernels.quant import compile_blocks

        if self.offload == "blocks":
            raise TubeletError("compile does not combine with block offload (use --offload model)")
        if not self.compiled:
            for d in self._dits():
                compile_blocks(d.blocks)
            self.compiled = True
        return self

    def _use(self, name: str) -> Any:
        """Context: component `name` on the device for the body (a no-op without offload)."""
        return self._offload.use(name) if self._offload is not None else contextlib.nullcontext()

    def valid_num_frames(self, num_frames: int) -> bool:
        """Whether the model makes clips of exactly `num_frames` frames."""
        if num_frames < 1:
            return False
        p0 = self.transformer.config.patch_size[0]
        if self.vae is None:
            return num_frames % p0 == 0
        tf = self.vae.temporal_factor
        return (num_frames - 1) % tf == 0 and (1 + (num_frames - 1) // tf) % p0 == 0

    def frame_counts(self, count: int = 5, start: int = 1) -> list[int]:
        """The first `count` frame counts >= `start` this model makes (e.g. [4, 8, 12, 16, 20])."""
        out: list[int] = []
        n = max(1, start)
        limit = n + count * 64 * max(1, self._tf) * self.transformer.config.patch_size[0]
        while len(out) < count and n < limit:
            if self.valid_num_frames(n):
                out.append(n)
            n += 1
        return out

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F', H', W') of the latents for a clip, with clear errors for sizes the model can't make."""
        p = self.transformer.config.patch_size
        if not self.valid_num_frames(num_frames):
            raise TubeletError(
                f"num_frames={num_frames}: this model makes {self._frames_rule()} frames, e.g. {self.frame_counts()}"
            )
        if self.vae is None:
            c, f, h, w = self.transformer.config.in_channels, num_frames, height, width
        else:
            sf, tf = self.vae.spatial_factor, self.vae.temporal_factor
            c, f, h, w = self.vae.config.z_dim, 1 + (num_frames - 1) // tf, height // sf, width // sf
            if height % sf or width % sf:
                raise TubeletError(f"height and width must be multiples of {sf * p[1]}, got {height}x{width}")
        if h % p[1] or w % p[2] or h < 1 or w < 1:
            m = p[1] * (self.vae.spatial_factor if self.vae is not None else 1)
            raise TubeletError(f"height and width must be positive multiples of {m}, got {height}x{width}")
        return c, f, h, w

    def estimate_memory(self, batch: int, shape: tuple[int, int, int, int], guidance: bool = True) -> int:
        """A rough upper estimate (bytes) of what sampling and decoding latents `shape` takes.

        DiT activations of one step (classifier-free guidance doubles the batch) plus the decoded
        float video and the VAE decoder's full-resolution feature maps. Model weights are not
        counted (they are already loaded).
        """
        c, f, h, w = shape
        cfg, p = self.transformer.config, self.transformer.config.patch_size
        tokens = (f // p[0]) * (h // p[1]) * (w // p[2])
        rows = batch * (2 if guidance else 1)
        dit = rows * tokens * (6 * cfg.dim + 2 * cfg.ffn_dim) * 4 + 4 * rows * c * f * h * w * 4
        frames = self._video_frames(f)
        height, width = (h * self.vae.spatial_factor, w * self.vae.spatial_factor) if self.vae else (h, w)
        video = batch * frames * height * width * 3 * (4 * 3 + 1)  # float copies + the uint8 frames
        if self.vae is not None:
            base = self.vae.config.decoder_base_dim or self.vae.config.base_dim
            video += batch * base * height * width * 4 * 8 * max(1, self.vae.temporal_factor)
        return int(dit + video)

    def check_memory(self, job: _Job, shape: tuple[int, int, int, int]) -> None:
        """Refuse a clip whose estimated memory is more than the device has free (`estimate_memory`)."""
        from tubelet.devices import check_memory

        need = self.estimate_memory(len(job.prompts), shape, guidance=job.guidance != 1.0)
        check_memory(
            need,
            self.device,
            f"generating {len(job.prompts)} clip(s) of {job.num_frames} frames at {job.height}x{job.width}",
            lower="--frames, --height/--width (or the batch)",
        )

    # ------------------------------------------------------------------ LoRA
    def _dits(self) -> list[Any]:
        """The VideoDiTs that run: the base of a box-controlled model, or Wan2.2's two experts."""
        experts = getattr(self.transformer, "experts", None)
        if experts:
            return list(experts)
        return [getattr(self.transformer, "dit", self.transformer)]

    @property
    def base_transformer(self) -> Any:
        """The VideoDiT itself (inside a box-controlled denoiser too): what a LoRA applies to."""
        from tubelet.models.box_adapter import BoxedDiT

        if getattr(self.transformer, "experts", None):
            raise TubeletError("LoRA on a two-expert model (Wan2.2 A14B) is not supported yet")

        return self.transformer.dit if isinstance(self.transformer, BoxedDiT) else self.transformer

    def load_lora(self, path: str | Path, scale: float = 1.0, *, name: str | None = None) -> str:
        """Apply a LoRA (a file in any supported format, or a LoRA directory) times `scale`; returns its name.

        Several LoRAs add up. Outputs record them (metadata "loras"). See `tubelet.models.lora`.
        """
        from tubelet.models.lora import load_lora, lora_path

        with self._offload_paused():
            name = load_lora(self.base_transformer, path, scale=scale, name=name)
        self.loras.append({"name": name, "file": str(lora_path(path)), "scale": float(scale)})
        return name

    def unload_lora(self, name: str | None = None) -> None:
        """Remove LoRA `name` (None: all); the model is exactly as before they were loaded."""
        from tubelet.models.lora import LoRAError, detach_lora

        if name is not None and name not in {r["name"] for r in self.loras}:
            raise LoRAError(f"no LoRA named {name!r} is loaded (loaded: {[r['name'] for r in self.loras]})")
        with self._offload_paused():
            detach_lora(self.base_transformer, name)
        self.loras = [r for r in self.loras if name is not None and r["name"] != name]

    def fuse_lora(self) -> None:
        """Fold the loaded LoRAs into the weights (faster sampling; `unload_lora` can no longer undo them)."""
        from tubelet.models.lora import merge_lora

        if self.quantized is not None:
            raise TubeletError(
                "fuse_lora: the DiT is quantized; fuse before quantizing, or keep the LoRA unfused"
            )

        with self._offload_paused():
            merge_lora(self.base_transformer)
        for r in self.loras:
            r["fused"] = True

    def check_request(self, request: GenerationRequest) -> None:
        """The checks of `request` against this model that need no weights, as errors before any
        work: the settings resolve against the model's defaults, the prompts (and the negative
        prompt) tokenize with its text encoder (a shapes-world model's grammar, a byte encoder's
        length), and box tracks bind to the prompt's objects on a model with box control.
        `tubelet serve` runs this on `load_pipeline_skeleton` when a job is submitted, so a prompt
        the model cannot read is a 400 then, not a failed job later. Files are not opened."""
        request.validate(check_files=False)
        prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
        job = self._job(
            request.prompt,
            request.negative_prompt,
            request.num_frames,
            request.height,
            request.width,
            request.num_inference_steps,
            request.guidance_scale,
            seed=0,
            sampler=request.sampler,
            boxes=request.boxes,
            cache=request.cache,
        )
        tokenize = getattr(self.text_encoder, "tokenize", None)
        if callable(tokenize):
            tokenize([*prompts, job.negative] if job.negative else prompts)

    @property
    def has_box_control(self) -> bool:
        """Whether this pipeline's denoiser reads box tracks (it has a box adapter)."""
        from tubelet.models.box_adapter import BoxedDiT

        return isinstance(self.transformer, BoxedDiT)

    def _resolve_boxes(self, boxes: Any, prompts: list[str]) -> list[Any] | None:
        """Box tracks from their JSON form / a list of `BoxTrack`s, bound to the prompt's objects."""
        from tubelet.boxes import BoxError, BoxTrack, parse_boxes

        if boxes is None or (isinstance(boxes, (list, tuple)) and not boxes):
            return None
        if not self.has_box_control:
            raise BoxError(
                "this model has no box control (its pipeline directory has no box_adapter/); pass boxes to a "
                "model trained with a box adapter (docs/box-control.md)"
            )
        if isinstance(boxes, (list, tuple)) and all(isinstance(t, BoxTrack) for t in boxes):
            tracks = list(boxes)
        else:
            tracks = parse_boxes(boxes)
        counter = getattr(self.text_encoder, "prompt_objects", None)  # a recipe's encoder may name them
        resolved: list[BoxTrack] = []
        for t in tracks:
            objects = [counter(p) for p in prompts] if callable(counter) else None
            obj = t.object
            if isinstance(obj, str):
                if objects is None:
                    raise BoxError(
                        f"{t.name}: this text encoder binds tracks by object index only, got {obj!r}"
                    )
                matches = {
                    i for names in objects for i, name in enumerate(names) if obj.lower() in name.lower()
                }
                if len(matches) != 1:
                    raise BoxError(
                        f"{t.name}: {obj!r} names {'no' if not matches else 'more than one'} object of the prompt "
                        f"(its objects: {objects[0]})"
                    )
                obj = matches.pop()
            if objects is not None:
                for names in objects:
                    if obj >= len(names):
                        raise BoxError(
                            f"{t.name}: binds to object {obj}, but the prompt names {len(names)} object(s): {names}"
                        )
            limit = self.transformer.adapter.config.max_objects
            if obj >= limit:
                raise BoxError(
                    f"{t.name}: binds to object {obj}; this box adapter knows objects 0..{limit - 1}"
                )
            clash = [r.name for r in resolved if r.object == obj]
            if clash:
                raise BoxError(f"{t.name}: object {obj} already has a track ({clash[0]})")
            resolved.append(BoxTrack(obj, t.keyframes, t.mode, t.name))
        return resolved

    def _box_cond(self, job: _Job, latent_frames: int, batch: int) -> Any:
        """`Boxes` for the job's tracks at the latent frames (each sampled at its frames' centre)."""
        from tubelet.boxes import track_arrays
        from tubelet.diffusion.cond import Boxes

        assert job.boxes is not None
        n_out = job.keep[1] if job.keep is not None else job.num_frames
        for t in job.boxes:
            t.check(num_frames=n_out)
        tf = self._tf
        times = [0.0] + [1 + tf * (j - 1) + (tf - 1) / 2 for j in range(1, latent_frames)]
        boxes, present, hard = track_arrays(job.boxes, times)
        objects = [t.object for t in job.boxes]
        dev = self.device
        out = Boxes(
            torch.from_numpy(boxes)[None].to(dev),
            torch.from_numpy(present)[None].to(dev),
            torch.from_numpy(hard)[None].to(dev),
            torch.tensor(objects, dtype=torch.long)[None].to(dev),
        )
        return out.expand(batch)

    def _frames_rule(self) -> str:
        p0, tf = self.transformer.config.patch_size[0], self._tf
        if self.vae is None or tf == 1:
            return f"multiples of {p0}" if p0 > 1 else "any number of"
        return f"1 + {tf}k" if p0 == 1 else f"1 + {tf}k (with 1 + k a multiple of {p0})"

    def _fit_frames(self, job: _Job, task: str, trim: str | None = "end") -> None:
        """Make `job.num_frames` a length the model makes: the next one up, trimmed back afterwards.

        trim "end" keeps the first frames, "start" the last; None (a task whose both ends are fixed)
        refuses with the lengths this model makes.
        """
        n = job.num_frames
        if self.valid_num_frames(n):
            return
        if n < 1:
            raise TubeletError(f"num_frames must be >= 1, got {n}")
        ok = self.frame_counts(start=max(1, n - 8 * self._tf * self.transformer.config.patch_size[0]))
        if trim is None:
            raise TubeletError(
                f"num_frames={n}: {task} fixes both ends of the clip, so it needs a length this model "
                f"makes ({self._frames_rule()} frames), e.g. {ok}"
            )
        m = self.frame_counts(1, start=n)[0]
        job.num_frames = m
        job.keep = (0, n) if trim == "end" else (m - n, m)
        which = "first" if trim == "end" else "last"
        job.fit_note = f"num_frames={n}: this model makes {self._frames_rule()} frames; generated {m} and kept the {which} {n}"
        Notes(job.on_note).add(job.fit_note)  # reported now, before the work; listed in the metadata

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with self._use("text_encoder"):
            emb = self.text_encoder.encode(prompts)
        return emb.context.to(self.device), emb.mask.to(self.device)

    def enable_vae_tiling(self, tile: int = 32, overlap: int = 8) -> TextToVideoPipeline:
        """Decode in overlapping spatial tiles of `tile` latent pixels (`tubelet.models.vae_tiling`):
        peak memory bounded by the tile; a small, blended difference where the decoder attends
        over whole frames. Returns self."""
        from tubelet.models.vae_tiling import VAETiling

        self.codec.tiling = VAETiling(tile, overlap)
        return self

    def disable_vae_tiling(self) -> TextToVideoPipeline:
        self.codec.tiling = None
        return self

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> video (B, 3, F, H, W) in [-1, 1]."""
        with self._use("vae"):
            return self.codec.decode(z.to(self.device)).clamp(-1, 1)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, F, H, W) in [-1, 1] -> normalised latents."""
        with self._use("vae"):
            return self.codec.encode(video.to(self.device))

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
        seed: int | list[int] | None = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        progress: bool = True,
        on_note: Callable[[str], None] | None = None,
        known_latents: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
        start_latents: torch.Tensor | None = None,
        strength: float | None = None,
        extra_metadata: dict[str, Any] | None = None,
        boxes: Any = None,
        cache: Any = None,
    ) -> VideoResult | list[VideoResult]:
        """Generate one clip per prompt (a list of prompts makes a batch, returned as a list).

        Same seed and settings give the same clip. `seed` may be a list with one seed per prompt: each
        clip's noise then comes from its own generator, so a clip does not depend on its batch.
        `known_latents` (1 or B, C, F', H', W') with `known_mask` (1 or B, F') bool keep latent frames
        fixed; `start_latents` (1 or B, ...) + `strength` start from a partially noised clip (SDEdit).
        The task methods (`image_to_video`, `extend`, `loop`, `connect`, `edit`) build these for you.
        `cache`: a step cache, as a threshold (e.g. 0.15) or a `StepCache`: steps where the
        denoiser's first block changes little since the last full step reuse the other blocks'
        work (`tubelet.diffusion.step_cache`; fewer DiT evaluations at a small cost in fidelity, the
        result's metadata says how many ran). None (default): every step runs the whole model.
        """
        job = self._job(
            prompt, negative_prompt, num_frames, height, width, num_inference_steps, guidance_scale,
            seed, generator, sampler, on_note, extra_metadata, boxes, cache,
        )  # fmt: skip
        if known_latents is None and start_latents is None:  # latents given: their length is the length
            self._fit_frames(job, "text-to-video")
        shape = self.latent_shape(job.num_frames, job.height, job.width)
        b = len(job.prompts)
        if (known_latents is None) != (known_mask is None):
            raise TubeletError("pass known_latents and known_mask together (or neither)")
        known = self._batched(known_latents, b, shape, "known_latents")
        mask = None
        if known_mask is not None:
            mask = known_mask.to(self.device, torch.bool)
            if mask.dim() != 2 or mask.shape[1] != shape[1] or mask.shape[0] not in (1, b):
                raise ValueError(f"known_mask has shape {tuple(mask.shape)}; expected (1 or {b}, {shape[1]})")
            mask = mask.expand(b, -1)
        start = self._batched(start_latents, b, shape, "start_latents")
        if strength is not None and start is None:
            raise TubeletError("strength is only used with start_latents (SDEdit); pass both")
        task = "t2v" if known is None and start is None else "conditioned"
        extra = {"task": task}
        return self._run(
            job, shape, extra, known=known, mask=mask, start=start,
            strength=1.0 if strength is None else strength, callback=callback, progress=progress,
        )  # fmt: skip

    # ------------------------------------------------------------------ requests
    @torch.no_grad()
    def generate(
        self,
        request: GenerationRequest,
        *,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        progress: bool = True,
        on_note: Callable[[str], None] | None = None,
    ) -> VideoResult:
        """Run one `GenerationRequest` (validated first, before any work); returns its clip.

        The result's metadata holds the request under "request". callback(step, num_steps, x,
        denoised) is called after every sampling step (`denoised`: the clean-latent estimate, e.g.
        for a live preview through `decode`); on_note receives each input adjustment once.
        """
        request.validate()
        if request.seed is None:  # the request in the metadata names the seed that made the clip
            request = replace(request, seed=int(torch.randint(0, 2**31 - 1, ()).item()))
        r = request
        kw: dict[str, Any] = {
            "seed": r.seed,
            "num_frames": r.num_frames,
            "height": r.height,
            "width": r.width,
            "num_inference_steps": r.num_inference_steps,
            "guidance_scale": r.guidance_scale,
            "negative_prompt": r.negative_prompt,
            "sampler": r.sampler,
            "callback": callback,
            "progress": progress,
            "on_note": on_note,
            "boxes": r.boxes,
            "cache": r.cache,
        }
        meta = {"request": r.to_dict()}
        if r.task == "i2v":
            result = self.image_to_video(
                r.prompt, r.image, last_image=r.last_image, extra_metadata=meta, **kw
            )
        elif r.task == "extend":
            result = self.extend(
                r.prompt,
                r.video,
                backward=r.backward,
                context_latents=r.context_latents,
                extra_metadata=meta,
                **kw,
            )
        elif r.task == "loop":
            result = self.loop(r.prompt, extra_metadata=meta, **kw)
        elif r.task == "connect":
            result = self.connect(
                r.prompt, r.video, r.video_b, context_latents=r.context_latents, extra_metadata=meta, **kw
            )
        elif r.task == "edit":
            strength = 0.6 if r.strength is None else float(r.strength)
            result = self.edit(r.prompt, r.video, strength=strength, extra_metadata=meta, **kw)
        else:
            result = self(r.prompt, extra_metadata=meta, **kw)
        assert isinstance(result, VideoResult)
        return result

    @torch.no_grad()
    def generate_many(
        self, requests: list[GenerationRequest], *, batch_size: int = 8, progress: bool = False
    ) -> Iterator[VideoResult]:
        """Run many requests, yielding one result per request in order (e.g. an evaluation suite).

        Every request is validated before any work. Consecutive text-to-video requests that differ
        only in prompt and seed run as one batch of up to `batch_size` clips (one seed per clip, so a
        clip is the same as when generated alone); other tasks run one at a time.
        """
        if batch_size < 1:
            raise TubeletError(f"batch_size must be >= 1, got {batch_size}")
        for r in requests:
            r.validate()

        def settings(r: GenerationRequest) -> tuple[Any, ...]:
            d = r.to_dict()
            d.pop("prompt"), d.pop("seed")
            return tuple(sorted(d.items(), key=lambda kv: kv[0]))

        i = 0
        while i < len(requests):
            first = requests[i]
            if first.task != "t2v" or first.seed is None:
                yield self.generate(first, progress=progress)
                i += 1
                continue
            j = i + 1
            while j < len(requests) and j - i < batch_size and requests[j].seed is not None:
                if settings(requests[j]) != settings(first):
                    break
                j += 1
            chunk = requests[i:j]
            r = first
            results = self(
                [c.prompt for c in chunk],
                seed=[int(c.seed) for c in chunk if c.seed is not None],
                num_frames=r.num_frames,
                height=r.height,
                width=r.width,
                num_inference_steps=r.num_inference_steps,
                guidance_scale=r.guidance_scale,
                negative_prompt=r.negative_prompt,
                sampler=r.sampler,
                progress=progress,
                cache=r.cache,
            )
            assert isinstance(results, list)
            for c, res in zip(chunk, results):
                res.metadata["request"] = c.to_dict()
                yield res
            i = j

    # ------------------------------------------------------------------ conditioning tasks
    @torch.no_grad()
    def image_to_video(
        self,
        prompt: str | list[str],
        image: Any = None,
        *,
        last_image: Any = None,
        **kwargs: Any,
    ) -> VideoResult | list[VideoResult]:
        """Animate `image` (the first frame), optionally ending on `last_image`.

        `image` / `last_image`: a path (an image, or a video whose first frame is used), a uint8
        (H, W, 3) array or a PIL image. Other keywords as for `__call__` (seed, num_frames, ...).
        Latent 0 is the image encoded as a 1-frame clip, so the first output frame is exactly
        decode(encode(image)) (the VAE's reconstruction of the resized image). `last_image` fixes the
        last latent frame to the still encoding of the image (see the module doc: the last tf frames
        are encoded as if preceded by the same image) and needs num_frames >= 1 + 2 tf. `last_image`
        alone gives a clip that ends on it.
        """
        callback, progress = kwargs.pop("callback", None), kwargs.pop("progress", True)
        job = self._job(prompt, **kwargs)
        if image is None and last_image is None:
            raise TubeletError("image_to_video needs an image, a last_image, or both")
        task = "first_last" if image is not None and last_image is not None else "i2v"
        task = "last_frame" if image is None else task
        self._fit_frames(job, task, {"i2v": "end", "last_frame": "start"}.get(task))
        c, f, h, w = shape = self.latent_shape(job.num_frames, job.height, job.width)
        need = 3 if task == "first_last" else 2
        if f < need:
            raise TubeletError(
                f"{task} needs at least {need} latent frames: num_frames >= {self._video_frames(need)}, "
                f"got {job.num_frames}"
            )
        self._check_conditioning()
        notes = Notes(job.on_note)
        inputs: dict[str, Any] = {}
        known = torch.zeros(1, c, f, h, w, device=self.device)
        mask = torch.zeros(1, f, dtype=torch.bool, device=self.device)
        if image is not None:
            img, inputs["image"] = load_image(image, "image", (job.height, job.width), notes)
            known[:, :, :1] = self.encode_video(self._to_pixels(img[None], job.height, job.width))
            mask[:, 0] = True
        if last_image is not None:
            img, inputs["last_image"] = load_image(last_image, "last_image", (job.height, job.width), notes)
            known[:, :, -1:] = self._encode_still(self._to_pixels(img[None], job.height, job.width))
            mask[:, -1] = True
        extra = {"task": task, "inputs": inputs}
        return self._run(
            job, shape, extra, known=known, mask=mask, notes=notes, callback=callback, progress=progress
        )

    @torch.no_grad()
    def extend(
        self,
        prompt: str | list[str],
        video: Any,
        *,
        backward: bool = False,
        context_latents: int | None = None,
        **kwargs: Any,
    ) -> VideoResult | list[VideoResult]:
        """Continue `video` forward in time (or, with `backward=True`, generate what came before it).

        `video`: a path, a `tubelet.media.Video` / `VideoResult` (frames + fps; resampled to the model's
        fps if needed) or a uint8 (T, H, W, 3) array taken to be at the model's fps. The output has
        num_frames frames and includes the known part: forward, the first 1 + tf (k - 1) output frames
        are the input's last frames (latents = encode of that tail, exactly as frame 0.. of a clip);
        backward, the last tf k output frames are the input's first tf k frames (still encoding, see
        the module doc). `metadata["new_frames"]` lists the generated frame range. `context_latents`
        = k, the known latent frames (default: half the output, at most what the input holds).
        """
        callback, progress = kwargs.pop("callback", None), kwargs.pop("progress", True)
        job = self._job(prompt, **kwargs)
        task = "extend_backward" if backward else "extend_forward"
        self._fit_frames(job, task, "start" if backward else "end")
        c, f, h, w = shape = self.latent_shape(job.num_frames, job.height, job.width)
        if f < 2:
            raise TubeletError(
                f"{task} needs at least 2 latent frames: num_frames >= {self._video_frames(2)}, got {job.num_frames}"
            )
        self._check_conditioning()
        notes = Notes(job.on_note)
        clip, info = load_clip(video, "video", self.config.fps, (job.height, job.width), notes)
        tf, n_in = self._tf, len(clip)
        avail = n_in // tf if backward else 1 + (n_in - 1) // tf
        k = self._context(context_latents, max(1, f // 2), f - 1, avail, info["source"], n_in, backward)
        known = torch.zeros(1, c, f, h, w, device=self.device)
        mask = torch.zeros(1, f, dtype=torch.bool, device=self.device)
        if backward:
            n = tf * k
            known[:, :, f - k :] = self._encode_groups(self._to_pixels(clip[:n], job.height, job.width))
            mask[:, f - k :] = True
        else:
            n = self._video_frames(k)
            known[:, :, :k] = self.encode_video(self._to_pixels(clip[n_in - n :], job.height, job.width))
            mask[:, :k] = True
        extra = {"task": task, "inputs": {"video": info}, "context_latents": k, "context_frames": n}
        return self._run(
            job, shape, extra, known=known, mask=mask, notes=notes, callback=callback, progress=progress
        )

    @torch.no_grad()
    def connect(
        self,
        prompt: str | list[str],
        video_a: Any,
        video_b: Any,
        *,
        context_latents: int | None = None,
        **kwargs: Any,
    ) -> VideoResult | list[VideoResult]:
        """A transition from the end of `video_a` to the start of `video_b`.

        Known prefix: encode of a's last 1 + tf (k - 1) frames; known suffix: still encoding of b's
        first tf k frames (k = `context_latents` per side, default max(1, (F' - 1) // 3), at least one
        latent frame is generated). Inputs as for `extend`; needs num_frames >= 1 + 2 tf.
        """
        callback, progress = kwargs.pop("callback", None), kwargs.pop("progress", True)
        job = self._job(prompt, **kwargs)
        self._fit_frames(job, "connect", None)
        c, f, h, w = shape = self.latent_shape(job.num_frames, job.height, job.width)
        if f < 3:
            raise TubeletError(
                f"connect needs at least 3 latent frames: num_frames >= {self._video_frames(3)}, got {job.num_frames}"
            )
        self._check_conditioning()
        notes = Notes(job.on_note)
        a, info_a = load_clip(video_a, "video_a", self.config.fps, (job.height, job.width), notes)
        b, info_b = load_clip(video_b, "video_b", self.config.fps, (job.height, job.width), notes)
        tf, default, most = self._tf, max(1, (f - 1) // 3), (f - 1) // 2
        ka = self._context(
            context_latents, default, most, 1 + (len(a) - 1) // tf, info_a["source"], len(a), False
        )
        kb = self._context(context_latents, default, most, len(b) // tf, info_b["source"], len(b), True)
        na, nb = self._video_frames(ka), tf * kb
        known = torch.zeros(1, c, f, h, w, device=self.device)
        mask = torch.zeros(1, f, dtype=torch.bool, device=self.device)
        known[:, :, :ka] = self.encode_video(self._to_pixels(a[len(a) - na :], job.height, job.width))
        known[:, :, f - kb :] = self._encode_groups(self._to_pixels(b[:nb], job.height, job.width))
        mask[:, :ka] = True
        mask[:, f - kb :] = True
        extra = {
            "task": "connect",
            "inputs": {"video_a": info_a, "video_b": info_b},
            "context_latents": [ka, kb],
            "context_frames": [na, nb],
        }
        return self._run(
            job, shape, extra, known=known, mask=mask, notes=notes, callback=callback, progress=progress
        )

    @torch.no_grad()
    def loop(self, prompt: str | list[str], **kwargs: Any) -> VideoResult | list[VideoResult]:
        """A seamless loop: played repeatedly, the last frame leads back into the first.

        Two passes. Pass 1 is the plain text-to-video sample (same seed -> same first frame as
        `pipe(prompt, seed=...)`). Pass 2 samples F' + u latent frames (u = the transformer's temporal
        patch size, 1 for the latent models, 4 for the default pixel model: one more token frame) with
        latent 0 kept from pass 1 and the u closing latents = the still encoding of frame 0 (the
        first_last task); the closing latents are not decoded, so the num_frames output frames end
        right before the clip returns to its first frame. Twice the sampling cost of one clip.
        """
        callback, progress = kwargs.pop("callback", None), kwargs.pop("progress", True)
        job = self._job(prompt, **kwargs)
        self._fit_frames(job, "loop", None)
        shape = self.latent_shape(job.num_frames, job.height, job.width)
        f = shape[1]
        if f < 2:
            raise TubeletError(
                f"loop needs at least 2 latent frames: num_frames >= {self._video_frames(2)}, got {job.num_frames}"
            )
        self._check_conditioning()
        u = self.transformer.config.patch_size[0]
        closed = self.latent_shape(self._video_frames(f + u), job.height, job.width)  # (C, F' + u, H', W')
        self.check_memory(job, closed)
        b = len(job.prompts)
        with _Progress(progress, passes=2) as bar:
            z1, _ = self._sample(job, self._noise(job, shape), progress=bar, callback=callback)
            first = self.decode(z1[:, :, :1])  # (B, 3, 1, H, W): frame 0 (the decoder is causal)
            known = torch.zeros(b, *closed, device=self.device)
            known[:, :, :1] = z1[:, :, :1]
            known[:, :, f:] = self._encode_still(first)  # broadcast over the u closing latents
            mask = torch.zeros(b, f + u, dtype=torch.bool, device=self.device)
            mask[:, 0] = True
            mask[:, f:] = True
            z, shift = self._sample(
                job, self._noise(job, closed), known=known, mask=mask, progress=bar, callback=callback
            )
        extra = {
            "task": "loop",
            "known_latent_frames": [0, *range(f, f + u)],
            "new_frames": [[1, job.num_frames]],
            "closing_latent": f"latent frames {f}..{f + u - 1} (still encoding of frame 0) are sampled, not decoded",
        }
        return self._finish(job, z, shift, extra, decode=z[:, :, :f])

    @torch.no_grad()
    def edit(
        self, prompt: str | list[str], video: Any, *, strength: float = 0.6, **kwargs: Any
    ) -> VideoResult | list[VideoResult]:
        """SDEdit: re-generate `video` under `prompt`, keeping its layout and motion to a degree.

        The clip is encoded, noised to the level where the last floor(strength * steps) steps of the
        schedule start, and sampled from there. strength 0 returns the input re-decoded
        (decode(encode(clip))); strength 1 ignores it (plain text-to-video from its noise).
        num_frames defaults to the input's length rounded down to 1 + tf k frames.
        """
        callback, progress = kwargs.pop("callback", None), kwargs.pop("progress", True)
        if not 0.0 <= float(strength) <= 1.0:
            raise TubeletError(f"edit strength must be in [0, 1], got {strength}")
        requested = kwargs.pop("num_frames", None)
        job = self._job(prompt, **kwargs)
        self._check_conditioning()
        notes = Notes(job.on_note)
        clip, info = load_clip(video, "video", self.config.fps, (job.height, job.width), notes)
        n_in = len(clip)
        if requested is not None and requested > n_in:
            raise TubeletError(
                f"{info['source']}: has {n_in} frames at {self.config.fps:g} fps, fewer than num_frames={requested}"
            )
        if requested is None:  # the input's length, rounded down to one the model makes (if any)
            shorter = [m for m in range(n_in, 0, -1) if self.valid_num_frames(m)]
            requested = shorter[0] if shorter else n_in
        job.num_frames = requested
        self._fit_frames(job, "edit")
        shape = self.latent_shape(job.num_frames, job.height, job.width)
        if requested < n_in:
            notes.add(f"{info['source']}: editing its first {requested} of {n_in} frames")
        if job.num_frames > n_in:  # a clip shorter than the shortest length: its last frame held
            clip = np.concatenate([clip, np.repeat(clip[-1:], job.num_frames - n_in, axis=0)])
            held = f"{n_in} frame{'s' if n_in != 1 else ''}"
            notes.add(
                f"{info['source']}: {held}, held on its last frame to the {job.num_frames} this model makes"
            )
        start = self.encode_video(self._to_pixels(clip[: job.num_frames], job.height, job.width))
        extra = {
            "task": "edit",
            "inputs": {"video": info},
            "strength": float(strength),
            "new_frames": [[0, requested]] if strength > 0 else [],
        }
        return self._run(
            job, shape, extra, start=start, strength=float(strength), notes=notes, callback=callback,
            progress=progress,
        )  # fmt: skip

    # ------------------------------------------------------------------ generation internals
    def _job(
        self,
        prompt: str | list[str],
        negative_prompt: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | list[int] | None = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        on_note: Callable[[str], None] | None = None,
        extra_metadata: dict[str, Any] | None = None,
        boxes: Any = None,
        cache: Any = None,
    ) -> _Job:
        """Resolve a call's settings against the model's defaults, with clear errors."""
        from tubelet.diffusion.sampling import SAMPLERS
        from tubelet.diffusion.step_cache import StepCache

        step_cache = StepCache.of(cache)
        if step_cache is not None and not hasattr(self.transformer, "run_block"):
            raise TubeletError(
                f"cache: this model's denoiser ({type(self.transformer).__name__}) has no stages to cache"
            )
        cfg = self.config
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise TubeletError("no prompt given")
        if not all(isinstance(p, str) for p in prompts):
            raise TubeletError("prompts must be strings")
        steps = cfg.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        sampler_name = sampler or cfg.sampler
        if sampler_name not in SAMPLERS:
            raise TubeletError(f"unknown sampler {sampler_name!r}; available: {sorted(SAMPLERS)}")
        if steps < 1:
            raise TubeletError(f"num_inference_steps must be >= 1, got {steps}")
        if isinstance(seed, (list, tuple)):
            if generator is not None:
                raise TubeletError("pass either a list of seeds or a generator, not both")
            if len(seed) != len(prompts):
                raise TubeletError(f"got {len(seed)} seeds for {len(prompts)} prompts; pass one per prompt")
            seed = [int(s) for s in seed]
            gens = [torch.Generator().manual_seed(s) for s in seed]
        elif generator is not None:
            gens = [generator]
        else:
            if seed is None:
                seed = int(torch.randint(0, 2**31 - 1, ()).item())
            gens = [torch.Generator().manual_seed(int(seed))]
        return _Job(
            prompts=prompts,
            single=isinstance(prompt, str),
            negative=cfg.negative_prompt if negative_prompt is None else negative_prompt,
            num_frames=num_frames or cfg.num_frames,
            height=height or cfg.height,
            width=width or cfg.width,
            steps=steps,
            guidance=cfg.guidance_scale if guidance_scale is None else float(guidance_scale),
            sampler=sampler_name,
            seed=seed,
            generators=gens,
            on_note=on_note,
            extra_metadata=dict(extra_metadata or {}),
            boxes=self._resolve_boxes(boxes, prompts),
            cache=step_cache,
        )

    def _noise(self, job: _Job, shape: tuple[int, int, int, int]) -> torch.Tensor:
        """Initial noise (B, C, F', H', W') drawn on each generator's device, moved to the model's."""
        b = len(job.prompts)
        if len(job.generators) == 1:
            g = job.generators[0]
            return torch.randn((b, *shape), generator=g, device=g.device).to(self.device)
        parts = [torch.randn((1, *shape), generator=g, device=g.device) for g in job.generators]
        return torch.cat(parts).to(self.device)

    def _batched(
        self, z: torch.Tensor | None, b: int, shape: tuple[int, int, int, int], name: str
    ) -> torch.Tensor | None:
        """Validate (1 or B, C, F', H', W') latents and expand them to the batch."""
        if z is None:
            return None
        if z.dim() != 5 or tuple(z.shape[1:]) != tuple(shape) or z.shape[0] not in (1, b):
            raise ValueError(
                f"{name} has shape {tuple(z.shape)}; expected (1 or {b}, {', '.join(map(str, shape))})"
            )
        return z.to(self.device, torch.float32).expand(b, -1, -1, -1, -1)

    def _sample(
        self,
        job: _Job,
        noise: torch.Tensor,
        *,
        known: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        start: torch.Tensor | None = None,
        strength: float = 1.0,
        progress: _Progress,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, float]:
        """One sampling pass from `noise` (B, C, F', H', W'): returns (latents, shift used)."""
        from tubelet.diffusion.sampling import SAMPLERS, flow_schedule, make_velocity_fn, sdedit_start

        if job.text is None:
            ctx, cmask = self.encode_prompts(job.prompts)
            uncond = None
            if job.guidance != 1.0:
                u_ctx, u_mask = self.encode_prompts([job.negative])
                uncond = Cond(context=u_ctx.to(ctx.dtype), context_mask=u_mask)
            job.text = (ctx, cmask, uncond)
        ctx, cmask, uncond = job.text
        box_cond = self._box_cond(job, noise.shape[2], noise.shape[0]) if job.boxes else None
        cond = Cond(context=ctx, context_mask=cmask, known=known, known_mask=mask, boxes=box_cond)
        if uncond is not None and box_cond is not None:
            # "joint": the unconditional branch has neither text nor boxes, so guidance pushes towards
            # both (the trained no-box state: every track absent); "text": both branches follow the boxes
            if self.config.box_guidance == "joint":
                uncond = uncond.replace(boxes=replace(box_cond, present=torch.zeros_like(box_cond.present)))
            else:
                uncond = uncond.replace(boxes=box_cond)
        _, _, f, h, w = noise.shape
        p = self.transformer.config.patch_size
        shift = self.shift_for((f // p[0]) * (h // p[1]) * (w // p[2]))
        sigmas = flow_schedule(job.steps, shift, self.config.schedule)
        model = self._model_fn(job)
        guidance: Any = job.guidance
        expert_for = getattr(self.transformer, "expert_for", None)
        g2 = self.config.guidance_scale_2
        if expert_for is not None and g2 is not None and float(g2) != job.guidance:
            if uncond is None:
                raise TubeletError(
                    "guidance_scale_2 needs guidance (guidance_scale != 1) for the high-noise expert"
                )
            g_high, g_low = job.guidance, float(g2)
            guidance = lambda t: g_high if expert_for(t) == "high" else g_low  # noqa: E731
        fn = make_velocity_fn(
            model, guidance_scale=guidance, uncond=uncond,
            integer_timesteps=self.config.schedule == "diffusers",
        )  # fmt: skip
        x = noise
        if start is not None:
            x, sigmas = sdedit_start(start, noise, strength, sigmas)
        progress.begin(len(sigmas) - 1)

        def on_step(i: int, n: int, xi: torch.Tensor, denoised: torch.Tensor) -> None:
            progress.step()
            if callback is not None:
                callback(i, n, xi, denoised)

        if len(sigmas) > 1:
            x = SAMPLERS[job.sampler](fn, x, sigmas, cond, callback=on_step)
        if job.cache is not None:
            job.cache_stats.append(cast(Any, getattr(model, "cached", model)).stats)
        return x, shift

    def _run(
        self,
        job: _Job,
        shape: tuple[int, int, int, int],
        extra: dict[str, Any],
        *,
        known: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        start: torch.Tensor | None = None,
        strength: float = 1.0,
        notes: Notes | None = None,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        progress: bool = True,
    ) -> VideoResult | list[VideoResult]:
        """One sampling pass of latents `shape` (C, F', H', W'), decoded into results.

        known (1 or B, C, F', H', W') + mask (1 or B, F'): frames kept; start (1 or B, ...) +
        strength: SDEdit. Both are shared by (expanded to) the batch.
        """
        b = len(job.prompts)
        extra = dict(extra)
        if known is not None and mask is not None:
            known, mask = known.expand(b, -1, -1, -1, -1), mask.expand(b, -1)
            extra.setdefault("known_latent_frames", [i for i in range(shape[1]) if bool(mask[0, i])])
            extra.setdefault("new_frames", self._new_frames(mask[0]))
        if start is not None:
            start = start.expand(b, -1, -1, -1, -1)
        if notes is not None and notes.items:
            extra["notes"] = list(notes.items)
        self.check_memory(job, shape)
        noise = self._noise(job, shape)
        with _Progress(progress) as bar:
            z, shift = self._sample(
                job, noise, known=known, mask=mask, start=start, strength=strength, progress=bar,
                callback=callback,
            )  # fmt: skip
        return self._finish(job, z, shift, extra)

    def _finish(
        self,
        job: _Job,
        z: torch.Tensor,
        shift: float,
        extra: dict[str, Any],
        *,
        decode: torch.Tensor | None = None,
    ) -> VideoResult | list[VideoResult]:
        """Decode latents (B, C, F', H', W') (or `decode`, a part of them) into results with metadata."""
        cfg = self.config
        video = self.decode(z if decode is None else decode)  # (B, 3, T, H, W) in [-1, 1]
        frames = unit_to_frames(video.permute(0, 2, 3, 4, 1)).cpu().numpy()  # (B, T, H, W, 3) uint8
        b = len(job.prompts)
        num_frames = job.num_frames
        extra = dict(extra)
        if job.keep is not None:  # a fitted length: cut back to the frames asked for
            lo, hi = job.keep
            frames, num_frames = frames[:, lo:hi], hi - lo
            extra["generated_frames"] = job.num_frames
            extra["notes"] = [*extra.get("notes", []), job.fit_note]
            if isinstance(extra.get("new_frames"), list):
                kept = [[max(a, lo) - lo, min(e, hi) - lo] for a, e in extra["new_frames"]]
                extra["new_frames"] = [r for r in kept if r[1] > r[0]]
        results = []
        for i, pr in enumerate(job.prompts):
            if isinstance(job.seed, list):
                seed: Any = job.seed[i]
            else:
                seed = job.seed if b == 1 or job.seed is None else [job.seed, i]
            meta = {
                "prompt": pr,
                "negative_prompt": job.negative,
                "seed": seed,
                "model": self.source or cfg.name,
                "num_frames": num_frames,
                "height": job.height,
                "width": job.width,
                "num_inference_steps": job.steps,
                "guidance_scale": job.guidance,
                **self._expert_meta(),
                "sampler": job.sampler,
                "shift": shift,
                "fps": cfg.fps,
                **(
                    {"boxes": tracks_to_dict(job.boxes), "box_guidance": cfg.box_guidance}
                    if job.boxes
                    else {}
                ),
                **({"loras": [dict(r) for r in self.loras]} if self.loras else {}),
                **({"cache": self._cache_meta(job, i)} if job.cache is not None else {}),
                **self.runtime_metadata(),
                **extra,
                **job.extra_metadata,
            }
            results.append(VideoResult(frames[i], cfg.fps, meta, latents=z[i].detach().float().cpu()))
        return results[0] if job.single else results

    def _expert_meta(self) -> dict[str, Any]:
        """A two-expert model's switch point and low-noise guidance (empty for one DiT)."""
        if not getattr(self.transformer, "experts", None):
            return {}
        g2 = self.config.guidance_scale_2
        return {"boundary_ratio": self.config.boundary_ratio, "guidance_scale_2": g2}

    def _cache_meta(self, job: _Job, i: int) -> dict[str, Any]:
        """Clip i's step-cache record: the settings, and the model calls of its sampling passes that
        ran every block (a clip's rows are its conditional and, with guidance, unconditional one)."""
        b = len(job.prompts)
        calls = full = 0
        for st in job.cache_stats:
            for rows in st.row_full:
                calls += 1
                full += any(rows[i::b])
        c = job.cache
        return {"threshold": c.threshold, "warmup": c.warmup, "max_skips": c.max_skips, "calls": calls,
                "full_calls": full}  # fmt: skip

    def _model_fn(self, job: _Job | None = None) -> Callable[..., torch.Tensor]:
        """The denoiser as ``(x, t, cond) -> v``: through a fresh step cache when the job has one
        (one per sampling pass), under autocast for a lower compute dtype."""
        dt = self.compute_dtype
        if self._parallel is not None and job is not None and job.cache is not None:
            raise TubeletError("the step cache does not combine with parallel generation yet: drop --cache")
        base = self._parallel if self._parallel is not None else self.transformer
        model: Any = base if job is None or job.cache is None else job.cache.wrap(self.transformer)
        if (dt is None or dt == torch.float32) and self._offload is None:
            return cast(Callable[..., torch.Tensor], model)
        low = dt is not None and dt != torch.float32

        experts = getattr(self.transformer, "expert_for", None)

        def run(x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
            name = "transformer_2" if experts is not None and experts(t) == "low" else "transformer"
            with (
                self._use(name),
                torch.autocast(x.device.type, dtype=dt or torch.float32, enabled=low),
            ):
                out = model(x, t, cond)
            return out.float() if low else out

        run.cached = model  # type: ignore[attr-defined]  # the cache's stats, for the metadata
        return run

    # ------------------------------------------------------------------ conditioning internals
    @property
    def _tf(self) -> int:
        """Video frames per latent frame after the first (1 for a pixel-space model)."""
        return self.codec.temporal_factor

    def _video_frames(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` latent frames: 1 + tf (F' - 1)."""
        return self.codec.video_frames(latent_frames)

    def _new_frames(self, mask: torch.Tensor) -> list[list[int]]:
        """Video frame ranges [start, end) made by unknown latent frames, for a (F',) mask."""
        ranges: list[list[int]] = []
        for j, k in enumerate(mask.tolist()):
            if k:
                continue
            lo, hi = (0, 1) if j == 0 else (self._video_frames(j), self._video_frames(j + 1))
            if ranges and ranges[-1][1] == lo:
                ranges[-1][1] = hi
            else:
                ranges.append([lo, hi])
        return ranges

    def _check_conditioning(self) -> None:
        """Frame conditioning encodes RGB frames: a pixel-space model must work on 3 channels."""
        c = self.transformer.config.in_channels
        if self.vae is None and c != 3:
            raise TubeletError(
                f"this pixel-space model has {c} input channels and no VAE: it cannot encode images or clips "
                "as known frames (needs a vae/ folder, or 3 channels)"
            )

    def _to_pixels(self, frames: np.ndarray, height: int, width: int) -> torch.Tensor:
        return to_pixels(frames, height, width, self.device)

    def _encode_groups(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, tf k, H, W) -> k latent frames (B, C, k, H', W') that stand for tf-frame groups.

        The frames are encoded after one extra copy of their first frame (a still past) whose own
        latent is dropped; see the module doc. Pixel space: the frames themselves (normalised).
        """
        if self.vae is None:
            return self.encode_video(video)
        return self.encode_video(torch.cat([video[:, :, :1], video], dim=2))[:, :, 1:]

    def _encode_still(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, 1, H, W) -> one latent frame (B, C, 1, H', W'): tf frames of the image, as a group."""
        return self._encode_groups(image.expand(-1, -1, self._tf, -1, -1))

    def _context(
        self,
        requested: int | None,
        default: int,
        most: int,
        available: int,
        source: str,
        n_in: int,
        head: bool,
    ) -> int:
        """Number of known latent frames taken from an input clip, validated against its length."""
        tf = self._tf
        need = (lambda k: tf * k) if head else self._video_frames
        if available < 1:
            raise TubeletError(
                f"{source}: too short: {n_in} frames at {self.config.fps:g} fps; its start is used as the known "
                f"end of the clip and needs at least {tf} frames"
            )
        if requested is None:
            return max(1, min(default, available, most))
        k = int(requested)
        if not 1 <= k <= most:
            raise TubeletError(
                f"context_latents={k}: must be in 1..{most} here (at least one of the output's latent "
                "frames must be generated; more frames allow more context)"
            )
        if k > available:
            raise TubeletError(
                f"{source}: too short: {n_in} frames at {self.config.fps:g} fps, but context_latents={k} needs "
                f"{need(k)} frames"
            )
        return k

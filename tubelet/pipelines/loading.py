"""Loading pipelines: model directories, training runs and the embedded default model.

    from tubelet.pipelines import load_pipeline
    pipe = load_pipeline()                          # the embedded default model
    pipe = load_pipeline("runs/t2v", device="auto")  # a pipeline directory or a training run

A pipeline directory holds one subfolder per component plus its own `config.json`::

    transformer/   VideoDiT            config.json + model.safetensors
    box_adapter/   BoxAdapter          (optional: box control, tubelet.models.box_adapter)
    text_encoder/  a text encoder (tubelet.models.text, or one a recipe registers)
    vae/           CausalVideoVAE      (absent for a pixel-space model)
    config.json    {"_class": "TextToVideoPipeline", ...}   (PipelineConfig)

Loading never unpickles (safetensors only). On the CPU, float16-stored weights are widened to
float32 and the oneDNN kernels of `tubelet.kernels` are installed on the denoiser and the VAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from tubelet.config import config_from_dict
from tubelet.errors import ConfigError, ModelLoadError, check_choice
from tubelet.models.hub import read_config_json

if TYPE_CHECKING:
    from tubelet.pipelines.text_to_video import PipelineConfig, TextToVideoPipeline

DEFAULT_MODEL_NAME = "shapes-t2v"


def default_model_dir() -> Path:
    """Where the embedded default model lives inside the package."""
    return Path(__file__).parent.parent / "assets" / DEFAULT_MODEL_NAME


def resolve_model_dir(model: str | Path | None) -> Path | None:
    """A pipeline directory for `model`: itself, or a training run's `model/` (None stays None)."""
    if model is None:
        return None
    d = Path(model)
    if not (d / "config.json").is_file() and (d / "model" / "config.json").is_file():
        return d / "model"  # a training run directory
    return d


def load_pipeline(
    model: str | Path | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: torch.dtype | None = None,
    offload: str | None = None,
) -> TextToVideoPipeline:
    """Load a pipeline directory or a training run (None: the embedded default model).

    device: "auto" (CUDA for this process's local rank, then MPS, ..., then CPU), "cpu", "cuda:1", ...
    dtype: the DiT's compute dtype (None: float32); bfloat16 / float16 also store its weights so
    (half the memory; the text encoder and the VAE keep theirs).
    offload: None, "model" or "blocks": the weights are read into CPU memory and run on `device`
    (`TextToVideoPipeline.enable_offload`), so the device never holds the whole model.
    """
    from tubelet.devices import resolve_device
    from tubelet.pipelines.offload import OFFLOAD_MODES
    from tubelet.pipelines.text_to_video import TextToVideoPipeline

    if offload is not None:
        check_choice("offload", offload, OFFLOAD_MODES)
    dev = resolve_device(device) if isinstance(device, str) else device
    if offload is None:
        pipe = TextToVideoPipeline.from_pretrained(resolve_model_dir(model), device=dev, dtype=dtype)
    else:  # read to the CPU, with the CPU kernels only where the CPU also runs the models
        pipe = TextToVideoPipeline.from_pretrained(
            resolve_model_dir(model), device="cpu", dtype=dtype, cpu_kernels=torch.device(dev).type == "cpu"
        )
    if dtype in (torch.bfloat16, torch.float16):
        pipe.transformer.to(dtype)
    return pipe if offload is None else pipe.enable_offload(offload, dev)


def load_components(
    directory: str | Path | None,
    *,
    device: str | torch.device = "cpu",
    weights: bool = True,
    cpu_kernels: bool | None = None,
) -> tuple[nn.Module, nn.Module, nn.Module | None, PipelineConfig]:
    """(transformer, text encoder, VAE or None, PipelineConfig) of a pipeline directory.

    ``weights=False`` builds every component from its config on the meta device (no weights read,
    no memory): what `load_pipeline_skeleton` uses to check requests against a model cheaply. A text
    encoder that cannot be built that way (a Hugging Face one) is then an empty placeholder module.
    cpu_kernels: install `tubelet.kernels` (default: when `device` is the CPU).
    """
    from tubelet.models.dit import VideoDiT
    from tubelet.models.text import load_text_encoder
    from tubelet.models.vae import CausalVideoVAE
    from tubelet.pipelines.text_to_video import PipelineConfig

    d = Path(directory) if directory is not None else default_model_dir()
    if directory is None and not (d / "config.json").is_file():
        raise ModelLoadError(
            f"the embedded default model is missing ({d}); reinstall tubelet or pass a model directory"
        )
    raw: dict[str, Any] = read_config_json(d)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{d / 'config.json'}: expected a JSON object, got {type(raw).__name__}")
    kind = raw.pop("_class", "TextToVideoPipeline")
    if kind != "TextToVideoPipeline":
        raise ModelLoadError(
            f"{d}: holds a {kind}, not a pipeline (expected transformer/, text_encoder/, vae/)"
        )
    for sub in ("transformer", "text_encoder"):
        if not (d / sub).is_dir():
            raise ModelLoadError(f"{d}: missing the {sub}/ folder of a pipeline directory")
    if isinstance(raw.get("flow"), dict) and raw["flow"].get("foreground_weight", 0.0) in (0, 0.0):
        raw["flow"].pop("foreground_weight", None)  # a removed experiment's inert default
    try:
        cfg = config_from_dict(PipelineConfig, raw, where=str(d / "config.json"))
    except ConfigError as e:
        raise ModelLoadError(str(e)) from None
    if not weights:
        return _skeleton(d, cfg)
    transformer: nn.Module = VideoDiT.from_pretrained(d / "transformer", device=device)
    if (d / "transformer_2").is_dir():  # Wan2.2 A14B: the low-noise expert
        from tubelet.models.experts import TwoExpertDiT

        if cfg.boundary_ratio is None:
            raise ModelLoadError(
                f"{d}: has transformer_2/ (two experts) but its config.json sets no boundary_ratio"
            )
        low = VideoDiT.from_pretrained(d / "transformer_2", device=device)
        try:
            transformer = TwoExpertDiT(transformer, low, cfg.boundary_ratio * 1000.0)
        except ConfigError as e:
            raise ModelLoadError(f"{d / 'transformer_2'}: {e}") from None
    if (d / "box_adapter").is_dir():  # box control: the adapter rides on the base DiT
        from tubelet.models.box_adapter import BoxAdapter, BoxedDiT

        adapter = BoxAdapter.from_pretrained(d / "box_adapter", device=device)
        try:
            transformer = BoxedDiT(cast(VideoDiT, transformer), adapter)
        except ConfigError as e:
            raise ModelLoadError(f"{d / 'box_adapter'}: {e}") from None
    text = load_text_encoder(d / "text_encoder", device=device)
    vae = CausalVideoVAE.from_pretrained(d / "vae", device=device) if (d / "vae").is_dir() else None
    for module in (transformer, text, vae):
        # float16 is a storage format here (the embedded model ships that way): CPUs compute it
        # slowly or not at all, so such weights are widened to float32 (`dtype` sets the compute).
        if module is not None and torch.device(device).type == "cpu":
            if any(p.dtype == torch.float16 for p in module.parameters()):
                module.float()
    if cpu_kernels is None:
        cpu_kernels = torch.device(device).type == "cpu"
    if cpu_kernels:
        # oneDNN kernels for the denoiser and the VAE (tubelet.kernels). Text encoders (run once
        # per prompt) and the DiT's time modulation (one row per sample) keep PyTorch's kernels:
        # no speed to gain there, and the embedded model's published outputs were made that way.
        from tubelet.kernels import apply_cpu_kernels

        # a box adapter's base keeps the same layers on PyTorch's kernels as a plain DiT
        base = getattr(transformer, "dit", transformer)
        for dit in getattr(transformer, "experts", [base]):
            apply_cpu_kernels(dit, skip=("time_mod",))
        if base is not transformer:
            apply_cpu_kernels(getattr(transformer, "adapter"))  # noqa: B009 - typed loosely (Module)
        if vae is not None:
            apply_cpu_kernels(vae)
    return transformer, text, vae, cfg


def _skeleton(d: Path, cfg: PipelineConfig) -> tuple[nn.Module, nn.Module, nn.Module | None, PipelineConfig]:
    """The components of pipeline directory `d` built from their configs on the meta device."""
    from tubelet import registry
    from tubelet.models.box_adapter import BoxAdapter, BoxedDiT
    from tubelet.models.dit import VideoDiT
    from tubelet.models.vae import CausalVideoVAE

    def build(cls: Any, sub: Path) -> nn.Module:
        with torch.device("meta"):
            return cast(nn.Module, cls(cls.config_from_directory(sub)))

    try:
        transformer = build(VideoDiT, d / "transformer")
        if (d / "box_adapter").is_dir():
            transformer = BoxedDiT(
                cast(VideoDiT, transformer), cast(BoxAdapter, build(BoxAdapter, d / "box_adapter"))
            )
        name = read_config_json(d / "text_encoder").get("_class")
        cls = registry.find("text_encoder_class", name) if isinstance(name, str) else None
        text: nn.Module = (
            build(cls, d / "text_encoder") if hasattr(cls, "config_from_directory") else nn.Module()
        )
        vae = build(CausalVideoVAE, d / "vae") if (d / "vae").is_dir() else None
    except (ConfigError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{d}: {e}") from None
    return transformer, text, vae, cfg


def load_pipeline_skeleton(model: str | Path | None = None) -> TextToVideoPipeline:
    """A weightless copy of a pipeline (every module on the meta device): enough to check a request
    against the model (`TextToVideoPipeline.check_request`) in a process that does not generate,
    such as `tubelet serve`'s web server, without reading gigabytes of weights."""
    from tubelet.pipelines.text_to_video import TextToVideoPipeline

    transformer, text, vae, cfg = load_components(resolve_model_dir(model), weights=False)
    return TextToVideoPipeline(transformer, text, vae, cfg)

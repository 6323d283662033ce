"""Convert diffusers Wan2.1 checkpoints into tubelet model directories.

Sources (SRC):

* a diffusers text-to-video Wan pipeline directory::

      model_index.json   ({"_class_name": "WanPipeline", ...})
      transformer/       WanTransformer3DModel: config.json + diffusion_pytorch_model.safetensors
                         (or sharded *.safetensors + diffusion_pytorch_model.safetensors.index.json)
      vae/               AutoencoderKLWan: same layout
      text_encoder/      transformers UMT5EncoderModel (config.json + *.safetensors)
      tokenizer/         its tokenizer (tokenizer.json / spiece.model, tokenizer_config.json)
      scheduler/         optional; scheduler_config.json's `flow_shift` becomes the sampling shift

* a single diffusers component directory, recognised by its config.json `_class_name`
  (`WanTransformer3DModel` or `AutoencoderKLWan`).

Results (DST):

* for a pipeline: a tubelet pipeline directory with `transformer/` (VideoDiT), `vae/`
  (CausalVideoVAE), `text_encoder/` (HFTextEncoder, see `tubelet.models.text`) and a top-level
  `config.json` with the generation defaults (`_class: TextToVideoPipeline`);
* for a component: that component's tubelet directory (config.json + model.safetensors),
  loadable with `VideoDiT.from_pretrained` / `CausalVideoVAE.from_pretrained`.

Weights are read with safetensors; a source holding only pickled `.bin`/`.pth` weights is read
with `torch.load(weights_only=True)` (tensors only, never arbitrary objects). The tensor
mapping itself lives in `wan_transformer.py` and `wan_vae.py`. The result is written to a
staging folder next to DST and moved into place only when every component succeeded, so a
failed conversion never leaves a half-written DST nor destroys an existing one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tubelet.errors import ConversionError, TubeletError

__all__ = [
    "DTYPES",
    "PIPELINE_DEFAULTS",
    "convert_text_encoder",
    "convert_transformer",
    "convert_vae",
    "convert_wan",
    "detect_source",
    "find_weight_files",
    "pipeline_config",
    "read_diffusers_weights",
]

TRANSFORMER_CLASS = "WanTransformer3DModel"
VAE_CLASS = "AutoencoderKLWan"
PIPELINE_CLASS = "WanPipeline"
PIPELINE_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Generation defaults of Wan2.1 text-to-video at 480p (diffusers' WanPipeline defaults).
# Wan's own default negative prompt is not shipped with diffusers, so it stays empty here.
PIPELINE_DEFAULTS: dict[str, Any] = {
    "_class": "TextToVideoPipeline",
    "height": 480,
    "width": 832,
    "num_frames": 81,
    "fps": 16,
    "num_inference_steps": 50,
    "guidance_scale": 5.0,
    "shift": 3.0,
    "sampler": "unipc",
    "schedule": "diffusers",  # diffusers' flow sigmas at integer timesteps: the same clips as WanPipeline
    "negative_prompt": "",
}

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# reading diffusers directories
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConversionError(f"{path}: missing {path.name} ({what})")
    from tubelet.core.parsing import read_json

    data = read_json(path, error=ConversionError, what=what)
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object at the top level")
    return data


def _component_config(directory: Path, expected_class: str) -> dict[str, Any]:
    """Read a diffusers component's config.json and check its `_class_name`."""
    if not directory.is_dir():
        raise ConversionError(
            f"{directory}: folder not found; expected a diffusers {expected_class} directory"
        )
    cfg = _read_json(directory / "config.json", f"the diffusers {expected_class} config")
    name = cfg.get("_class_name")
    if name != expected_class:
        raise ConversionError(
            f"{directory / 'config.json'}: _class_name is {name!r}, expected {expected_class!r}"
        )
    return cfg


def detect_source(src: str | Path) -> str:
    """Return "pipeline", "transformer" or "vae" for a diffusers Wan directory, else raise."""
    s = Path(src)
    if not s.exists():
        raise ConversionError(f"{s}: source not found")
    if not s.is_dir():
        raise ConversionError(
            f"{s}: not a directory; expected a diffusers Wan pipeline directory (with model_index.json) "
            f"or a {TRANSFORMER_CLASS} / {VAE_CLASS} component directory"
        )
    if (s / "model_index.json").is_file():
        return "pipeline"
    if (s / "config.json").is_file():
        name = _read_json(s / "config.json", "component config").get("_class_name")
        if name == TRANSFORMER_CLASS:
            return "transformer"
        if name == VAE_CLASS:
            return "vae"
        raise ConversionError(
            f"{s / 'config.json'}: _class_name is {name!r}; a single component source must be a "
            f"{TRANSFORMER_CLASS} or {VAE_CLASS} directory"
        )
    raise ConversionError(
        f"{s}: neither model_index.json (a diffusers Wan pipeline) nor config.json (a "
        f"{TRANSFORMER_CLASS} / {VAE_CLASS} component) found"
    )


def find_weight_files(directory: str | Path) -> list[Path]:
    """The weight files of a diffusers component directory, in load order.

    Preference: `diffusion_pytorch_model.safetensors`; a sharded `*.safetensors.index.json`
    (every shard must exist); a single other `*.safetensors` (e.g. a dtype variant); a pickled
    `diffusion_pytorch_model.bin` / `*.pth` / `*.pt`.
    """
    d = Path(directory)
    single = d / "diffusion_pytorch_model.safetensors"
    if single.is_file():
        return [single]
    indexes = sorted(d.glob("*.safetensors.index*.json"))
    if len(indexes) > 1:
        raise ConversionError(f"{d}: several weight index files {[p.name for p in indexes]}; keep one")
    if indexes:
        index = _read_json(indexes[0], "sharded weights index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{indexes[0]}: no 'weight_map' mapping tensor names to shard files")
        shards = [d / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise ConversionError(f"{d}: missing weight shard(s) {missing} listed in {indexes[0].name}")
        return shards
    others = sorted(d.glob("*.safetensors"))
    if len(others) == 1:
        return others
    if len(others) > 1:
        raise ConversionError(
            f"{d}: several .safetensors files {[p.name for p in others]} and no *.safetensors.index.json "
            "saying how they fit together"
        )
    pickled = [d / "diffusion_pytorch_model.bin", *sorted(d.glob("*.pth")), *sorted(d.glob("*.pt"))]
    pickled = [p for p in pickled if p.is_file()]
    if len(pickled) == 1:
        return pickled
    if len(pickled) > 1:
        raise ConversionError(f"{d}: several pickled weight files {[p.name for p in pickled]}; keep one")
    raise ConversionError(
        f"{d}: no weights found; expected diffusion_pytorch_model.safetensors (or sharded "
        "*.safetensors with diffusion_pytorch_model.safetensors.index.json)"
    )


def _read_weight_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            out: dict[str, Tensor] = {}
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for k in f.keys():
                    out[k] = f.get_tensor(k)
            return out
        except Exception as e:
            raise ConversionError(f"{path}: cannot read safetensors file ({e})") from None
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(
            f"{path}: cannot read pickled weights safely (only plain tensors are accepted; {e}); "
            "convert it to diffusion_pytorch_model.safetensors"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise ConversionError(f"{path}: expected a mapping of tensor names to tensors")
    return dict(obj)


def read_diffusers_weights(directory: str | Path) -> dict[str, Tensor]:
    """Every tensor of a diffusers component directory (single file or shards), on the CPU."""
    out: dict[str, Tensor] = {}
    for path in find_weight_files(directory):
        part = _read_weight_file(path)
        dup = sorted(set(part) & set(out))
        if dup:
            raise ConversionError(f"{path}: tensor(s) {dup[:5]} also appear in another shard")
        out.update(part)
    return out


# ---------------------------------------------------------------------------------------------
# converting one component
# ---------------------------------------------------------------------------------------------


def _call(what: str, src: Path, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a mapping function; anything but a TubeletError becomes a ConversionError naming SRC."""
    try:
        return fn(*args)
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}") from None
    except TubeletError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError, AssertionError, IndexError) as e:
        detail = f"tensor {e.args[0]!r} not found" if isinstance(e, KeyError) and e.args else str(e)
        raise ConversionError(f"{src}: cannot convert the {what} ({detail})") from None


def _check_against_model(
    model: nn.Module, state: dict[str, Tensor], origin: dict[int, str], src: Path, what: str
) -> None:
    """Names and shapes of `state` must equal those of `model` (built on the meta device)."""
    from tubelet.models.hub import first_shape_mismatch, name_mismatch

    expected = model.state_dict()
    names = name_mismatch(expected, state)
    if names:
        raise ConversionError(f"{src}: the {what} weights do not match its config: {names}")
    bad = first_shape_mismatch(expected, state)
    if bad:
        name, got, want = bad
        source_name = origin.get(id(state[name]))
        named = f"{name!r}" if source_name in (None, name) else f"{source_name!r} (tubelet {name!r})"
        raise ConversionError(f"{src}: tensor {named} has shape {got}, but the config expects {want}")


def _cast_in_place(state: dict[str, Tensor], dtype: torch.dtype | None) -> None:
    """Cast floating tensors one at a time, so the old copy of each is freed as we go."""
    if dtype is None:
        return
    for k in list(state):
        v = state[k]
        if v.is_floating_point() and v.dtype != dtype:
            state[k] = v.to(dtype)


def _convert_component(
    src: Path,
    dst: Path,
    *,
    diffusers_class: str,
    what: str,
    config_fn: Callable[[dict[str, Any]], Any],
    state_fn: Callable[[dict[str, Tensor], Any], dict[str, Tensor]],
    model_cls: type,
    dtype: torch.dtype | None,
    log: Log,
) -> Path:
    cfg = _component_config(src, diffusers_class)
    config = _call(f"{what} config", src / "config.json", config_fn, cfg)
    files = find_weight_files(src)
    log(f"{what}: reading {len(files)} weight file(s) from {src}")
    sd = read_diffusers_weights(src)
    n_params = sum(v.numel() for v in sd.values())
    origin = {id(v): k for k, v in sd.items()}
    log(f"{what}: converting {len(sd)} tensors ({n_params / 1e6:.1f}M values)")
    state = _call(f"{what} weights", src, state_fn, sd, config)
    del sd
    with torch.device("meta"):
        model = model_cls(config)
    _check_against_model(model, state, origin, src, what)
    _cast_in_place(state, dtype)
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.save_pretrained(dst)
    stored = {
        str(p.dtype).removeprefix("torch.") for p in model.state_dict().values() if p.is_floating_point()
    }
    log(f"{what}: converted to {model_cls.__name__} ({', '.join(sorted(stored))})")
    return dst


def convert_transformer(
    src: str | Path, dst: str | Path, *, dtype: torch.dtype | None = None, log: Log | None = None
) -> Path:
    """diffusers `WanTransformer3DModel` directory -> tubelet `VideoDiT` directory at `dst`."""
    from tubelet.convert.wan_transformer import convert_transformer_state_dict, dit_config_from_diffusers
    from tubelet.models.dit import VideoDiT

    return _convert_component(
        Path(src),
        Path(dst),
        diffusers_class=TRANSFORMER_CLASS,
        what="transformer",
        config_fn=dit_config_from_diffusers,
        state_fn=convert_transformer_state_dict,
        model_cls=VideoDiT,
        dtype=dtype,
        log=log or _stderr,
    )


def convert_vae(
    src: str | Path, dst: str | Path, *, dtype: torch.dtype | None = None, log: Log | None = None
) -> Path:
    """diffusers `AutoencoderKLWan` directory -> tubelet `CausalVideoVAE` directory at `dst`."""
    from tubelet.convert.wan_vae import convert_vae_state_dict, vae_config_from_diffusers
    from tubelet.models.vae import CausalVideoVAE

    return _convert_component(
        Path(src),
        Path(dst),
        diffusers_class=VAE_CLASS,
        what="vae",
        config_fn=vae_config_from_diffusers,
        state_fn=convert_vae_state_dict,
        model_cls=CausalVideoVAE,
        dtype=dtype,
        log=log or _stderr,
    )


def convert_text_encoder(
    text_encoder_dir: str | Path,
    tokenizer_dir: str | Path,
    dst: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_length: int = 512,
    log: Log | None = None,
) -> Path:
    """transformers UMT5/T5 encoder + tokenizer folders -> tubelet `HFTextEncoder` directory."""
    from tubelet.errors import ModelLoadError
    from tubelet.models.text import HFTextEncoder

    log = log or _stderr
    log(f"text_encoder: loading {text_encoder_dir} and {tokenizer_dir}")
    try:
        enc = HFTextEncoder.from_hf(text_encoder_dir, tokenizer_dir, max_length=max_length, dtype=dtype)
    except ModelLoadError as e:
        raise ConversionError(f"cannot convert the text encoder: {e}") from None
    enc.save_pretrained(dst)
    log(
        f"text_encoder: converted to HFTextEncoder ({type(enc.model).__name__}, {str(enc.dtype).removeprefix('torch.')})"
    )
    return Path(dst)


# ---------------------------------------------------------------------------------------------
# whole pipelines
# ---------------------------------------------------------------------------------------------


def _check_pipeline(src: Path) -> dict[str, Any]:
    """Validate a diffusers Wan pipeline directory before anything is written."""
    index = _read_json(src / "model_index.json", "diffusers pipeline index")
    name = index.get("_class_name")
    if name is not None and name != PIPELINE_CLASS:
        raise ConversionError(
            f"{src / 'model_index.json'}: _class_name is {name!r}; only the text-to-video {PIPELINE_CLASS!r} "
            "is supported (convert its transformer/ or vae/ folder on its own otherwise)"
        )
    if index.get("expand_timesteps"):
        raise ConversionError(
            f"{src / 'model_index.json'}: expand_timesteps (Wan2.2 TI2V-5B, per-token timesteps with its "
            "own VAE) is not supported yet; Wan2.1 and Wan2.2 A14B text-to-video pipelines are"
        )
    if _has_second_transformer(index):
        ratio = index.get("boundary_ratio")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ConversionError(
                f"{src / 'model_index.json'}: a second transformer (Wan2.2 A14B) needs boundary_ratio in "
                f"[0, 1], got {ratio!r}"
            )
        if not (src / "transformer_2").is_dir():
            raise ConversionError(
                f"{src}: model_index.json names transformer_2, but the transformer_2/ folder is missing"
            )
        _component_config(src / "transformer_2", TRANSFORMER_CLASS)
        find_weight_files(src / "transformer_2")
    elif index.get("boundary_ratio") is not None:
        raise ConversionError(
            f"{src / 'model_index.json'}: boundary_ratio is set but there is no transformer_2 (second expert)"
        )
    for comp in PIPELINE_COMPONENTS:
        if not (src / comp).is_dir():
            raise ConversionError(
                f"{src}: missing the {comp}/ folder of the diffusers Wan pipeline (expected "
                f"{', '.join(c + '/' for c in PIPELINE_COMPONENTS)} next to model_index.json)"
            )
    _component_config(src / "transformer", TRANSFORMER_CLASS)
    find_weight_files(src / "transformer")
    vae_cfg = _component_config(src / "vae", VAE_CLASS)
    find_weight_files(src / "vae")
    te = src / "text_encoder"
    te_cfg = _read_json(te / "config.json", "the transformers text encoder config")
    if te_cfg.get("model_type") not in ("umt5", "t5"):
        raise ConversionError(
            f"{te / 'config.json'}: model_type is {te_cfg.get('model_type')!r}; expected 'umt5' (or 't5')"
        )
    if not any(te.glob("*.safetensors")):
        raise ConversionError(f"{te}: no *.safetensors weights of the text encoder found")
    tok = src / "tokenizer"
    if not (tok / "tokenizer.json").is_file() and not (tok / "spiece.model").is_file():
        raise ConversionError(f"{tok}: missing tokenizer files; expected tokenizer.json or spiece.model")
    return vae_cfg


def _has_second_transformer(index: dict[str, Any]) -> bool:
    second = index.get("transformer_2")
    return isinstance(second, list) and bool(second) and second[0] is not None


def describe_pipeline(src: str | Path) -> str:
    """What kind of Wan pipeline `src` holds, in words (for the conversion log)."""
    index = _read_json(Path(src) / "model_index.json", "diffusers pipeline index")
    if _has_second_transformer(index):
        return f"Wan2.2 A14B text-to-video (two experts, boundary_ratio {index.get('boundary_ratio')})"
    return "Wan2.1 text-to-video"


def pipeline_config(src: str | Path, vae_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The top-level tubelet pipeline config.json for a diffusers Wan pipeline directory."""
    s = Path(src)
    vae_cfg = vae_config if vae_config is not None else _component_config(s / "vae", VAE_CLASS)
    cfg = dict(PIPELINE_DEFAULTS)
    index = (
        _read_json(s / "model_index.json", "diffusers pipeline index")
        if (s / "model_index.json").is_file()
        else {}
    )
    if _has_second_transformer(index):
        cfg["boundary_ratio"] = float(index["boundary_ratio"])
    sched = s / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        shift = _read_json(sched, "scheduler config").get("flow_shift")
        if shift is not None:
            if isinstance(shift, bool) or not isinstance(shift, (int, float)) or shift <= 0:
                raise ConversionError(f"{sched}: flow_shift must be a positive number, got {shift!r}")
            cfg["shift"] = float(shift)
    z_dim = vae_cfg.get("z_dim", 16)
    for key in ("latents_mean", "latents_std"):
        values = vae_cfg.get(key)
        if not isinstance(values, list) or len(values) != z_dim:
            raise ConversionError(
                f"{s / 'vae' / 'config.json'}: {key} must be a list of z_dim={z_dim} numbers"
            )
        cfg[key] = [float(v) for v in values]
    cfg["vae_scale_factor_spatial"] = int(vae_cfg.get("scale_factor_spatial") or 8)
    cfg["vae_scale_factor_temporal"] = int(vae_cfg.get("scale_factor_temporal") or 4)
    return cfg


def _prepare_destination(src: Path, dst: Path, overwrite: bool) -> None:
    s, d = src.resolve(), dst.resolve()
    if s == d or s in d.parents or d in s.parents:
        raise ConversionError(
            f"{dst}: the destination must lie outside the source {src} (and not contain it)"
        )
    if d.exists():
        if not d.is_dir():
            raise ConversionError(f"{dst}: exists and is a file; give a directory path")
        if any(d.iterdir()) and not overwrite:
            raise ConversionError(f"{dst}: exists and is not empty; pass --overwrite to replace it")


def convert_wan(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
    log: Log | None = None,
) -> Path:
    """Convert a diffusers Wan pipeline or component directory `src` into tubelet format at `dst`.

    `dtype` (float32 / bfloat16 / float16) casts floating weights; None keeps the stored dtypes.
    An existing non-empty `dst` is only replaced with `overwrite=True`, and only once the new
    result is complete. Returns `dst`.
    """
    log = log or _stderr
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConversionError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    if dtype is not None and dtype not in DTYPES.values():
        raise ConversionError(f"dtype {dtype} is not one of {sorted(DTYPES)}")
    src, dst = Path(src), Path(dst)
    kind = detect_source(src)
    _prepare_destination(src, dst, overwrite)
    vae_cfg = _check_pipeline(src) if kind == "pipeline" else None

    dst.parent.mkdir(parents=True, exist_ok=True)
    stage = dst.parent / f".{dst.name}.converting-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    try:
        if kind == "transformer":
            convert_transformer(src, stage, dtype=dtype, log=log)
        elif kind == "vae":
            convert_vae(src, stage, dtype=dtype, log=log)
        else:
            log(f"converting the diffusers Wan pipeline {src} -> {dst}: {describe_pipeline(src)}")
            two = (src / "transformer_2").is_dir() and "two experts" in describe_pipeline(src)
            n = 4 if two else 3
            log(f"[1/{n}] transformer" + (" (high-noise expert)" if two else ""))
            convert_transformer(src / "transformer", stage / "transformer", dtype=dtype, log=log)
            if two:
                log(f"[2/{n}] transformer_2 (low-noise expert)")
                convert_transformer(src / "transformer_2", stage / "transformer_2", dtype=dtype, log=log)
            log(f"[{n - 1}/{n}] vae")
            convert_vae(src / "vae", stage / "vae", dtype=dtype, log=log)
            log(f"[{n}/{n}] text_encoder")
            convert_text_encoder(
                src / "text_encoder", src / "tokenizer", stage / "text_encoder", dtype=dtype, log=log
            )
            cfg = pipeline_config(src, vae_cfg)
            (stage / "config.json").write_text(
                json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
        _move_into_place(stage, dst)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(f"done: {dst}")
    return dst


def _move_into_place(stage: Path, dst: Path) -> None:
    """Replace `dst` by `stage`; the old `dst` is removed only after the rename succeeded."""
    if not dst.exists():
        os.replace(stage, dst)
        return
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    os.replace(dst, old)
    try:
        os.replace(stage, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)

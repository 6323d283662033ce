"""VBench-style evaluation dimensions that run offline.

Each dimension is a small unit with

- ``name``: VBench's spelling where it measures a VBench dimension;
- ``needs``: what it must find under a local weights directory (empty for classical ones);
- ``stand_in`` / ``method``: whether a classical method replaces VBench's network, and which;
- ``score(clip, prompt) -> ClipScore``: one clip;
- ``aggregate(scores) -> float | None``: many clips, following VBench's definition (per-clip mean,
  a fraction of dynamic clips, or a sum over all frame pairs of all clips divided once).

Dimensions never download anything: model-backed ones read Hugging Face format directories from a
weights directory with ``local_files_only=True`` and raise `WeightsMissingError` (naming the
dimension and exactly what to put where) when they are absent.

The definitions, constants and deviations from VBench are documented in ``docs/evaluation.md``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from tubelet import registry
from tubelet.errors import ConfigError, ModelLoadError

__all__ = [
    "DIMENSIONS",
    "Clip",
    "ClipScore",
    "Dimension",
    "DimensionResult",
    "WeightsMissingError",
    "clip_preprocess",
    "dimension_names",
    "dino_preprocess",
    "dynamic_degree_check",
    "farneback_flow",
    "interpolate_midframe",
    "make_dimension",
    "missing_weights",
    "parse_dimension_list",
    "static_filter",
    "summarise",
    "top_fraction_mean",
]

# VBench's preprocessing constants.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_RESOLUTION = 224
_BATCH = 16  # frames per forward pass of the model-backed dimensions


class WeightsMissingError(ModelLoadError):
    """A model-backed dimension cannot find its local weights (nothing is ever downloaded)."""


# --------------------------------------------------------------------------------------------
# Clips and scores
# --------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """One video clip to score.

    Args:
        frames: uint8 RGB frames, shape (T, H, W, 3).
        fps: frames per second (dynamic degree subsamples to ~8 fps with it).
        name: an identifier used in reports (usually the path relative to the folder).
    """

    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float = 8.0
    name: str = ""
    _gray: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _flows: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        f = self.frames
        if not isinstance(f, np.ndarray) or f.ndim != 4 or f.shape[-1] != 3 or f.shape[0] < 1:
            shape = getattr(f, "shape", None)
            raise ValueError(f"Clip.frames: expected a (T, H, W, 3) array with T >= 1, got shape {shape}")
        if f.dtype != np.uint8:
            raise ValueError(f"Clip.frames: expected dtype uint8, got {f.dtype}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"Clip.fps: expected a positive frame rate, got {self.fps}")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def gray(self, i: int) -> np.ndarray:
        """Frame `i` as (H, W) uint8 luma, cached."""
        g = self._gray.get(i)
        if g is None:
            g = cv2.cvtColor(np.ascontiguousarray(self.frames[i]), cv2.COLOR_RGB2GRAY)
            self._gray[i] = g
        return g

    def flow(self, i: int, j: int) -> np.ndarray:
        """Dense optical flow from frame `i` to frame `j`, (H, W, 2) float32 pixels, cached."""
        key = (i, j)
        fl = self._flows.get(key)
        if fl is None:
            fl = farneback_flow(self.gray(i), self.gray(j))
            self._flows[key] = fl
        return fl


@dataclass
class ClipScore:
    """The score of one clip on one dimension.

    ``value`` is in [0, 1] (aesthetic quality: the LAION score / 10, which is in [0, 1] for real
    predictions), or None when the clip is excluded from this dimension; then
    ``details["excluded"]`` says why.
    """

    value: float | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DimensionResult:
    """One dimension over a set of clips."""

    name: str
    score: float | None
    stand_in: bool
    method: str
    per_clip: dict[str, float | None]
    excluded: dict[str, str]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "stand_in": self.stand_in,
            "method": self.method,
            "per_clip": dict(self.per_clip),
            "excluded": dict(self.excluded),
            **({"details": self.details} if self.details else {}),
        }


# --------------------------------------------------------------------------------------------
# Classical building blocks
# --------------------------------------------------------------------------------------------


def farneback_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense optical flow from luma image `a` to `b` with OpenCV's Farneback method.

    Args:
        a, b: (H, W) uint8 images of the same size.
    Returns:
        (H, W, 2) float32 flow in pixels: ``a(y, x) ~ b(y + flow[..., 1], x + flow[..., 0])``.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"farneback_flow: expected two (H, W) images of one size, got {a.shape} and {b.shape}"
        )
    # Pyramid deep enough for large motions, with a coarsest level of at least ~16 px.
    levels = int(max(1, min(5, math.floor(math.log2(max(min(a.shape), 16) / 16)) + 1)))
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, levels, 15, 3, 5, 1.2, 0)


def top_fraction_mean(flow: np.ndarray, fraction: float) -> float:
    """Mean of the largest `fraction` of the flow magnitudes (VBench's per-pair motion statistic).

    VBench takes ``int(H * W * fraction)`` values; at least one is used here so tiny frames work.
    """
    mag = np.hypot(flow[..., 0], flow[..., 1]).ravel()  # (H * W,)
    k = max(1, int(mag.size * fraction))
    return float(np.partition(mag, mag.size - k)[mag.size - k :].mean())


def static_filter(clip: Clip) -> tuple[bool, dict[str, Any]]:
    """VBench's static-video filter (used before temporal flickering), with OpenCV flow for RAFT.

    Flow statistic per pair: mean of the top 2% magnitudes, over the consecutive pairs plus
    (first, last) and (last, first). Threshold ``3 * min(H, W) / 256``; ``count_num =
    round(2 * T / 16)`` with T frames. Static when at most ``count_num`` consecutive pairs exceed
    the threshold and neither first/last pair exceeds ``2 * count_num * threshold``.
    """
    t = clip.num_frames
    h, w = clip.size
    thres = 3.0 * min(h, w) / 256.0
    count_num = round(2 * t / 16.0)
    pairs = [(i, i + 1) for i in range(t - 1)] + [(0, t - 1), (t - 1, 0)]
    scores = [top_fraction_mean(clip.flow(i, j), 0.02) for i, j in pairs]
    moving = sum(s > thres for s in scores[:-2])
    ends_ok = all(s <= thres * count_num * 2 for s in scores[-2:])
    static = moving <= count_num and ends_ok
    return static, {
        "threshold": thres,
        "count_num": count_num,
        "moving_pairs": int(moving),
        "first_last_motion": [round(s, 4) for s in scores[-2:]],
    }


def dynamic_degree_check(clip: Clip) -> tuple[bool, dict[str, Any]]:
    """VBench's dynamic-degree rule for one clip, with OpenCV flow in place of RAFT.

    Frames are taken every ``max(1, round(fps / 8))``; per consecutive sampled pair the statistic
    is the mean of the top 5% flow magnitudes; threshold ``max(1, 8 / fps) * 6 * min(H, W) / 256``;
    with N sampled *frames*, ``count_num = round(4 * N / 16)`` and the clip is dynamic once
    ``count_num`` pairs exceed the threshold (VBench's loop: with ``count_num == 0`` any pair counts).
    """
    interval = max(1, round(clip.fps / 8.0))
    idx = list(range(0, clip.num_frames, interval))
    h, w = clip.size
    factor = max(1.0, 8.0 / clip.fps)
    thres = factor * 6.0 * min(h, w) / 256.0
    count_num = round(4 * len(idx) / 16.0)
    scores = [top_fraction_mean(clip.flow(i, j), 0.05) for i, j in itertools.pairwise(idx)]
    exceed = sum(s > thres for s in scores)
    dynamic = len(scores) > 0 and exceed >= count_num
    return dynamic, {
        "interval": interval,
        "threshold": thres,
        "count_num": count_num,
        "pairs_over_threshold": int(exceed),
        "pairs": len(scores),
    }


def interpolate_midframe(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Classical frame interpolation at t = 0.5 (stand-in for VBench's AMT-S).

    Bidirectional Farneback flow; the flows from the middle frame to each end are approximated
    from the two end-to-end flows (``F_t0 = -t(1-t) F_01 + t^2 F_10``, ``F_t1 = (1-t)^2 F_01 -
    t(1-t) F_10``, t = 1/2); both ends are backward-warped with `cv2.remap` and averaged.

    Args:
        a, b: (H, W, 3) uint8 frames.
    Returns:
        (H, W, 3) uint8 predicted middle frame.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(
            f"interpolate_midframe: expected two (H, W, 3) frames of one size, got {a.shape}, {b.shape}"
        )
    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    f01 = farneback_flow(ga, gb)  # (H, W, 2)
    f10 = farneback_flow(gb, ga)
    ft0 = 0.25 * (f10 - f01)
    ft1 = 0.25 * (f01 - f10)
    h, w = ga.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W) each
    wa = cv2.remap(a, xs + ft0[..., 0], ys + ft0[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    wb = cv2.remap(b, xs + ft1[..., 0], ys + ft1[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mid = (wa.astype(np.float32) + wb.astype(np.float32)) * 0.5
    return np.clip(np.rint(mid), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Model preprocessing (VBench: torchvision Resize on float frames, then crop / normalise)
# --------------------------------------------------------------------------------------------


def _resize_shorter(x: Any, size: int, mode: str) -> Any:
    """torchvision ``Resize(size, antialias=False)`` on a float (N, 3, H, W) tensor."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    if (new_h, new_w) == (h, w):
        return x
    return F.interpolate(x, size=(new_h, new_w), mode=mode, align_corners=False, antialias=False)


def _to_float_nchw(frames: np.ndarray) -> Any:
    import torch

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)


def _normalise(x: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    import torch

    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x / 255.0 - m) / s


def clip_preprocess(frames: np.ndarray, size: int = MODEL_RESOLUTION) -> Any:
    """VBench's ``clip_transform``: shorter side to `size` (bicubic), centre crop, CLIP normalisation.

    Args:
        frames: (T, H, W, 3) uint8.
    Returns:
        (T, 3, size, size) float32 tensor.
    """
    x = _resize_shorter(_to_float_nchw(frames), size, "bicubic")  # (T, 3, H', W')
    h, w = x.shape[-2:]
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    x = x[:, :, top : top + size, left : left + size]
    return _normalise(x, CLIP_MEAN, CLIP_STD)


def dino_preprocess(frames: np.ndarray, size: int = MODEL_RESOLUTION) -> Any:
    """VBench's ``dino_transform``: shorter side to `size` (bilinear, no crop), ImageNet normalisation.

    Args:
        frames: (T, H, W, 3) uint8.
    Returns:
        (T, 3, size, W') or (T, 3, H', size) float32 tensor (aspect ratio kept).
    """
    x = _resize_shorter(_to_float_nchw(frames), size, "bilinear")
    return _normalise(x, IMAGENET_MEAN, IMAGENET_STD)


# --------------------------------------------------------------------------------------------
# Weights layout
# --------------------------------------------------------------------------------------------

_DINO_DIR = "dino-vitb16"
_CLIP_B_DIR = "clip-vit-base-patch32"
_CLIP_L_DIR = "clip-vit-large-patch14"
_AESTHETIC_HEAD = "aesthetic/head.safetensors"

_HF_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def _hf_dir_problem(path: Path, tokenizer: bool = False) -> str | None:
    if not path.is_dir():
        return "directory not found"
    if not (path / "config.json").is_file():
        return "config.json missing"
    if not any((path / f).is_file() for f in _HF_MODEL_FILES):
        return "no model.safetensors (or pytorch_model.bin) in it"
    if tokenizer and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        return "no tokenizer files (tokenizer.json, or vocab.json + merges.txt) in it"
    return None


# (relative path, what to put there, needs tokenizer) for each model-backed dimension.
_WEIGHT_LAYOUT: dict[str, list[tuple[str, str, bool]]] = {
    "subject_consistency": [
        (
            _DINO_DIR,
            "DINO ViT-B/16 as a Hugging Face ViTModel directory (a local copy of facebook/dino-vitb16)",
            False,
        )
    ],
    "background_consistency": [
        (
            _CLIP_B_DIR,
            "CLIP ViT-B/32 as a Hugging Face CLIPModel directory (a local copy of openai/clip-vit-base-patch32)",
            False,
        )
    ],
    "clip_text_alignment": [
        (
            _CLIP_B_DIR,
            "CLIP ViT-B/32 as a Hugging Face CLIPModel directory with its tokenizer files "
            "(a local copy of openai/clip-vit-base-patch32)",
            True,
        )
    ],
    "aesthetic_quality": [
        (
            _CLIP_L_DIR,
            "CLIP ViT-L/14 as a Hugging Face CLIPModel directory (a local copy of openai/clip-vit-large-patch14)",
            False,
        ),
        (
            _AESTHETIC_HEAD,
            "the LAION aesthetic linear head (tensors 'weight' (1, 768) and 'bias' (1,)) converted from "
            "sa_0_4_vit_l_14_linear.pth as described in docs/evaluation.md",
            False,
        ),
    ],
}


def missing_weights(name: str, weights: str | Path | None) -> str | None:
    """Why dimension `name` cannot run with weights directory `weights`, or None if it can.

    The message names the dimension and exactly which files to put where. Nothing is downloaded.
    """
    layout = _WEIGHT_LAYOUT.get(name)
    if not layout:
        return None
    if weights is None:
        wanted = "; ".join(f"WEIGHTS/{rel}: {what}" for rel, what, _ in layout)
        return f"{name} needs local weights (pass --weights WEIGHTS; nothing is downloaded): {wanted}"
    root = Path(weights)
    problems = []
    for rel, what, tok in layout:
        p = root / rel
        if rel.endswith(".safetensors"):
            problem = None if p.is_file() else "file not found"
        else:
            problem = _hf_dir_problem(p, tokenizer=tok)
        if problem:
            problems.append(f"{p} ({problem}): put {what} there")
    if problems:
        return f"{name} cannot run (nothing is downloaded): " + "; ".join(problems)
    return None


@functools.lru_cache(maxsize=4)
def _load_hf(kind: str, path: str, device: str) -> Any:
    """Load a Hugging Face model from a local directory (cached so dimensions share a CLIP)."""
    try:
        import torch
        import transformers
    except ImportError as e:  # pragma: no cover - transformers is an optional dependency
        raise ModelLoadError(
            f"{path}: loading it needs the 'transformers' package ({e}); pip install transformers"
        ) from None
    model: Any  # a ViTModel or a CLIPModel (transformers' `.to` typing trips mypy on either)
    try:
        if kind == "vit":
            model = transformers.ViTModel.from_pretrained(
                path, local_files_only=True, add_pooling_layer=False
            )
        elif kind == "clip":
            model = transformers.CLIPModel.from_pretrained(path, local_files_only=True)
        elif kind == "tokenizer":
            return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        else:  # pragma: no cover - internal
            raise ValueError(kind)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"{path}: cannot load it as a Hugging Face {kind} directory ({e})") from None
    return model.to(device=torch.device(device), dtype=torch.float32).eval()


# --------------------------------------------------------------------------------------------
# Dimensions
# --------------------------------------------------------------------------------------------


class Dimension:
    """Base class: one evaluation dimension. Subclasses set the class attributes and `score`."""

    name: ClassVar[str]
    method: ClassVar[str]
    stand_in: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()  # paths relative to the weights directory
    vbench: ClassVar[bool] = True  # False: no VBench normalisation applies to this dimension

    def score(self, clip: Clip, prompt: str) -> ClipScore:  # pragma: no cover - abstract
        raise NotImplementedError

    def aggregate(self, scores: Sequence[ClipScore]) -> float | None:
        """Mean over the clips that were scored (VBench's default: per clip, then mean)."""
        vals = [s.value for s in scores if s.value is not None]
        return float(np.mean(vals)) if vals else None

    def summary(self, scores: Sequence[ClipScore]) -> dict[str, Any]:
        """Extra report numbers over the scored clips (`DimensionResult.details`); none by default."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stand_in": self.stand_in,
            "method": self.method,
            "needs": list(self.needs),
        }


class TemporalFlickering(Dimension):
    name = "temporal_flickering"
    stand_in = True
    method = (
        "VBench formula (255 - mean abs difference of consecutive raw frames) / 255 on static clips; "
        "the static filter uses OpenCV Farneback flow instead of RAFT (stand-in)"
    )

    def score(self, clip: Clip, prompt: str) -> ClipScore:
        if clip.num_frames < 2:
            return ClipScore(None, {"excluded": "needs at least 2 frames"})
        static, info = static_filter(clip)
        if not static:
            return ClipScore(
                None, {"excluded": "not static (VBench scores only static clips)", "static_filter": info}
            )
        f = clip.frames.astype(np.int16)  # (T, H, W, 3)
        mae = np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))  # (T - 1,)
        return ClipScore(float((255.0 - mae.mean()) / 255.0), {"static_filter": info})


class MotionSmoothness(Dimension):
    name = "motion_smoothness"
    stand_in = True
    method = (
        "VBench formula (255 - mean abs error of the interpolated odd frames) / 255; frames interpolated "
        "from the even frames by bidirectional OpenCV Farneback flow + cv2.remap blending instead of AMT-S "
        "(stand-in)"
    )

    def score(self, clip: Clip, prompt: str) -> ClipScore:
        even = clip.frames[0::2]  # (ceil(T/2), H, W, 3)
        if len(even) < 2:
            return ClipScore(None, {"excluded": "needs at least 3 frames"})
        errs = []
        for k in range(len(even) - 1):
            pred = interpolate_midframe(even[k], even[k + 1])
            real = clip.frames[2 * k + 1]
            errs.append(float(cv2.absdiff(pred, real).mean()))
        return ClipScore(float((255.0 - np.mean(errs)) / 255.0), {"frames_interpolated": len(errs)})


class DynamicDegree(Dimension):
    name = "dynamic_degree"
    stand_in = True
    method = (
        "VBench rule (frames every round(fps/8), top-5% flow magnitude per pair against "
        "max(1, 8/fps) * 6 * min(H, W) / 256, dynamic if round(4N/16) pairs exceed it); "
        "OpenCV Farneback flow instead of RAFT (stand-in). Score = fraction of dynamic clips"
    )

    def score(self, clip: Clip, prompt: str) -> ClipScore:
        dynamic, info = dynamic_degree_check(clip)
        return ClipScore(1.0 if dynamic else 0.0, info)


class _FeatureConsistency(Dimension):
    """s_i = (max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2, summed over all frames of all clips."""

    def __init__(self, weights: str | Path, device: str = "cpu") -> None:
        reason = missing_weights(self.name, weights)
        if reason:
            raise WeightsMissingError(reason)
        self.weights = Path(weights)
        self.device = device

    def features(self, frames: np.ndarray) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, clip: Clip, prompt: str) -> ClipScore:
        if clip.num_frames < 2:
            return ClipScore(None, {"excluded": "needs at least 2 frames"})
        f = self.features(clip.frames).double()  # (T, D), L2-normalised
        prev = (f[1:] * f[:-1]).sum(-1).clamp(min=0.0)  # (T - 1,)
        first = (f[1:] * f[:1]).sum(-1).clamp(min=0.0)  # (T - 1,)
        s = 0.5 * (prev + first)
        return ClipScore(float(s.mean()), {"sum": float(s.sum()), "pairs": int(s.numel())})

    def aggregate(self, scores: Sequence[ClipScore]) -> float | None:
        """VBench: the sum over all frame pairs of all clips, divided once by their number."""
        kept = [s for s in scores if s.value is not None]
        pairs = sum(s.details["pairs"] for s in kept)
        return float(sum(s.details["sum"] for s in kept) / pairs) if pairs else None


def _batched(fn: Any, frames: np.ndarray) -> Any:
    """``fn`` over chunks of `_BATCH` frames (preprocessed chunk by chunk to bound memory), concatenated."""
    import torch

    with torch.inference_mode():
        return torch.cat([fn(frames[i : i + _BATCH]) for i in range(0, frames.shape[0], _BATCH)], dim=0)


def _clip_image_features(model: Any, frames: np.ndarray, device: str) -> Any:
    """CLIP image embeddings (the projected pooled output) of uint8 (T, H, W, 3) frames, L2-normalised: (T, P)."""
    import torch.nn.functional as F

    def run(chunk: np.ndarray) -> Any:
        out = model.vision_model(pixel_values=clip_preprocess(chunk).to(device))
        return model.visual_projection(out.pooler_output).float().cpu()

    return F.normalize(_batched(run, frames), dim=-1)


class SubjectConsistency(_FeatureConsistency):
    name = "subject_consistency"
    method = "VBench: DINO ViT-B/16 CLS features (Hugging Face ViTModel port), VBench preprocessing"
    needs = (_DINO_DIR + "/",)

    def features(self, frames: np.ndarray) -> Any:
        import torch.nn.functional as F

        model = _load_hf("vit", str(self.weights / _DINO_DIR), self.device)

        def run(chunk: np.ndarray) -> Any:
            pixels = dino_preprocess(chunk).to(self.device)  # (B, 3, 224, W')
            out = model(pixel_values=pixels, interpolate_pos_encoding=True)
            return out.last_hidden_state[:, 0].float().cpu()  # (B, D) CLS after the final norm

        return F.normalize(_batched(run, frames), dim=-1)


class BackgroundConsistency(_FeatureConsistency):
    name = "background_consistency"
    method = "VBench: CLIP ViT-B/32 image embeddings (Hugging Face CLIPModel port), VBench preprocessing"
    needs = (_CLIP_B_DIR + "/",)

    def features(self, frames: np.ndarray) -> Any:
        model = _load_hf("clip", str(self.weights / _CLIP_B_DIR), self.device)
        return _clip_image_features(model, frames, self.device)


class ClipTextAlignment(Dimension):
    name = "clip_text_alignment"
    stand_in = True
    vbench = False
    method = (
        "per-frame CLIP ViT-B/32 image-text cosine (clamped at 0), mean over frames then clips; a stand-in for "
        "VBench's overall_consistency (ViCLIP), so it is not normalised into the VBench Semantic score"
    )
    needs = (_CLIP_B_DIR + "/",)

    def __init__(self, weights: str | Path, device: str = "cpu") -> None:
        reason = missing_weights(self.name, weights)
        if reason:
            raise WeightsMissingError(reason)
        self.weights = Path(weights)
        self.device = device

    def score(self, clip: Clip, prompt: str) -> ClipScore:
        import torch
        import torch.nn.functional as F

        path = str(self.weights / _CLIP_B_DIR)
        model = _load_hf("clip", path, self.device)
        tok = _load_hf("tokenizer", path, self.device)
        img = _clip_image_features(model, clip.frames, self.device)  # (T, P)
        max_len = int(model.config.text_config.max_position_embeddings)
        enc = tok([prompt], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        with torch.inference_mode():
            out = model.text_model(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device),
            )
            txt = model.text_projection(out.pooler_output).float().cpu()  # (1, P)
        txt = F.normalize(txt, dim=-1)
        per_frame = (img @ txt[0]).clamp(min=0.0)  # (T,)
        return ClipScore(float(per_frame.mean()), {"frames": int(per_frame.numel())})


class AestheticQuality(Dimension):
    name = "aesthetic_quality"
    method = (
        "VBench: CLIP ViT-L/14 image embedding (Hugging Face CLIPModel port), L2-normalised, LAION linear "
        "aesthetic head / 10; mean over frames, then clips"
    )
    needs = (_CLIP_L_DIR + "/", _AESTHETIC_HEAD)

    def __init__(self, weights: str | Path, device: str = "cpu") -> None:
        reason = missing_weights(self.name, weights)
        if reason:
            raise WeightsMissingError(reason)
        self.weights = Path(weights)
        self.device = device
        self._head: tuple[Any, Any] | None = None

    def head(self, dim: int) -> tuple[Any, Any]:
        """The (weight (1, dim), bias (1,)) of the linear head, validated."""
        if self._head is None:
            from tubelet.models.hub import load_safetensors

            path = self.weights / _AESTHETIC_HEAD
            sd = load_safetensors(path)
            w, b = sd.get("weight"), sd.get("bias")
            if w is None or b is None:
                raise ModelLoadError(f"{path}: expected tensors 'weight' and 'bias', found {sorted(sd)}")
            if tuple(w.shape) != (1, dim) or tuple(b.shape) != (1,):
                raise ModelLoadError(
                    f"{path}: expected weight (1, {dim}) and bias (1,) to match the CLIP projection size, "
                    f"got {tuple(w.shape)} and {tuple(b.shape)}"
                )
            self._head = (w.float(), b.float())
        return self._head

    def score(self, clip: Clip, prompt: str) -> ClipScore:
        model = _load_hf("clip", str(self.weights / _CLIP_L_DIR), self.device)
        feats = _clip_image_features(model, clip.frames, self.device)  # (T, P)
        w, b = self.head(int(feats.shape[-1]))
        per_frame = (feats @ w[0] + b[0]) / 10.0  # (T,)
        return ClipScore(float(per_frame.mean()), {"frames": int(per_frame.numel())})


# Dimensions by name, in report order; recipes add theirs through `tubelet.registry` (kind
# "eval_dimension"), after these.
DIMENSIONS: dict[str, type[Dimension]] = {
    d.name: d
    for d in (
        SubjectConsistency,
        BackgroundConsistency,
        TemporalFlickering,
        MotionSmoothness,
        DynamicDegree,
        AestheticQuality,
        ClipTextAlignment,
    )
}
CLASSICAL = ("temporal_flickering", "motion_smoothness", "dynamic_degree")


def dimension_names() -> list[str]:
    """All registered dimension names (the installed recipes' included), in report order."""
    return registry.names("eval_dimension")


def parse_dimension_list(spec: str | None) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (None or ``"all"``: every dimension); unknown names raise ConfigError."""
    if spec is None or spec.strip().lower() == "all":
        return dimension_names()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError(f"--dims {spec!r}: no dimension named; valid: {', '.join(dimension_names())}")
    unknown = [n for n in names if registry.find("eval_dimension", n) is None]
    if unknown:
        raise ConfigError(f"unknown dimension(s) {', '.join(unknown)}; valid: {', '.join(dimension_names())}")
    return list(dict.fromkeys(names))


def make_dimension(name: str, weights: str | Path | None = None, device: str = "cpu") -> Dimension:
    """Build dimension `name`.

    Raises:
        ConfigError: unknown name.
        WeightsMissingError: a model-backed dimension whose files are not under `weights`.
        ModelLoadError: a dependency cannot be loaded.
    """
    cls = registry.find("eval_dimension", name)
    if cls is None:
        raise ConfigError(f"unknown dimension {name!r}; valid: {', '.join(dimension_names())}")
    if name in _WEIGHT_LAYOUT:
        reason = missing_weights(name, weights)
        if reason:
            raise WeightsMissingError(reason)
        return cls(weights, device=device)
    return cls()


def summarise(dim: Dimension, scores: Mapping[str, ClipScore]) -> DimensionResult:
    """Aggregate per-clip scores (keyed by video name) into a `DimensionResult`."""
    per_clip = {k: (None if s.value is None else float(s.value)) for k, s in scores.items()}
    excluded = {k: str(s.details.get("excluded", "excluded")) for k, s in scores.items() if s.value is None}
    kept = [s for s in scores.values() if s.value is not None]
    details = dim.summary(kept) if kept else {}
    return DimensionResult(
        name=dim.name,
        score=dim.aggregate(list(scores.values())),
        stand_in=dim.stand_in,
        method=dim.method,
        per_clip=per_clip,
        excluded=excluded,
        details=details,
    )

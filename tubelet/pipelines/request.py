"""`GenerationRequest`: one generation job, as the CLI, the eval suites and a server submit it.

    req = GenerationRequest("a red circle moving right", seed=0)
    req.validate()                      # types, ranges, task fields, input files: no model needed
    out = pipe.generate(req)            # -> VideoResult; out.metadata["request"] == req.to_dict()
    GenerationRequest.from_dict(req.to_dict()) == req

Unset fields (None) take the model's defaults (`PipelineConfig`) when the pipeline resolves the
request. Inputs are file paths (serialisable); the Python task methods (`pipe.image_to_video`, ...)
also take arrays and PIL images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tubelet.config import config_from_dict, config_to_dict
from tubelet.errors import ConfigError, TubeletError

TASKS = ("t2v", "i2v", "extend", "loop", "connect", "edit")

# Seeds are what torch.Generator.manual_seed takes: a 64-bit integer, signed or unsigned.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
# Hard limits checked without a model (a model's own limits, e.g. memory, are checked when the
# pipeline resolves the request).
MAX_STEPS = 1000
MAX_FRAMES = 4096
MAX_SIDE = 8192
MAX_PROMPT_CHARS = 10_000

# The fields each task reads besides the common ones (prompt, sizes, steps, guidance, seed, ...).
_TASK_FIELDS: dict[str, set[str]] = {
    "t2v": set(),
    "i2v": {"image", "last_image"},
    "extend": {"video", "backward", "context_latents"},
    "loop": set(),
    "connect": {"video", "video_b", "context_latents"},
    "edit": {"video", "strength"},
}
_INPUT_FIELDS = ("image", "last_image", "video", "video_b")


class RequestError(TubeletError, ValueError):
    """A generation request is not valid (names the field, the value and what would be)."""


@dataclass
class GenerationRequest:
    """One clip to generate. See the module doc; `task` picks which input fields apply.

    task: "t2v" (text only), "i2v" (`image` first frame and/or `last_image`), "extend" (`video`,
    `backward`, `context_latents`), "loop", "connect" (`video` -> `video_b`, `context_latents`),
    "edit" (`video`, `strength` in [0, 1], default 0.6).
    """

    prompt: str
    task: str = "t2v"
    negative_prompt: str | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    sampler: str | None = None
    seed: int | None = None
    image: str | None = None
    last_image: str | None = None
    video: str | None = None
    video_b: str | None = None
    backward: bool = False
    context_latents: int | None = None
    strength: float | None = None
    boxes: Any = None  # box tracks, the JSON form of `tubelet.boxes` ({"tracks": [...]}); t2v, i2v, extend
    cache: float | None = None  # step-cache threshold (tubelet.diffusion.step_cache); None: off

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON values (the sidecar's "request")."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "request") -> GenerationRequest:
        """A request from a mapping (e.g. JSON); unknown keys and wrong types are errors."""
        if not isinstance(data, dict):
            raise RequestError(f"{where}: expected a JSON object, got {type(data).__name__}")
        try:
            return config_from_dict(cls, data, where=where)
        except ConfigError as e:
            raise RequestError(str(e)) from None

    # ------------------------------------------------------------------ validation
    def validate(self, *, check_files: bool = True) -> GenerationRequest:
        """Check everything that needs no model; raises `RequestError`. Returns self.

        check_files: also check that the input files exist and are files.
        """
        if not isinstance(self.prompt, str):
            raise RequestError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise RequestError(f"prompt has {len(self.prompt)} characters; at most {MAX_PROMPT_CHARS}")
        _check_text("prompt", self.prompt)
        if self.negative_prompt is not None:
            if not isinstance(self.negative_prompt, str):
                raise RequestError("negative_prompt must be a string")
            _check_text("negative_prompt", self.negative_prompt)
        if self.task not in TASKS:
            raise RequestError(f"task {self.task!r} is not one of {list(TASKS)}")
        _check_int("num_frames", self.num_frames, 1, MAX_FRAMES)
        _check_int("height", self.height, 1, MAX_SIDE)
        _check_int("width", self.width, 1, MAX_SIDE)
        _check_int("num_inference_steps", self.num_inference_steps, 1, MAX_STEPS)
        _check_int("seed", self.seed, SEED_MIN, SEED_MAX)
        _check_int("context_latents", self.context_latents, 1, MAX_FRAMES)
        if self.guidance_scale is not None:
            g = self.guidance_scale
            if (
                isinstance(g, bool)
                or not isinstance(g, (int, float))
                or not math.isfinite(g)
                or not 0 <= g <= 100
            ):
                raise RequestError(f"guidance_scale must be a number in [0, 100] (1 = off), got {g!r}")
        if self.strength is not None:
            st = self.strength
            if isinstance(st, bool) or not isinstance(st, (int, float)) or not 0.0 <= st <= 1.0:
                raise RequestError(f"strength must be in [0, 1] (0 keeps the clip, 1 ignores it), got {st!r}")
        if self.sampler is not None:
            from tubelet.diffusion.sampling import SAMPLERS

            if self.sampler not in SAMPLERS:
                raise RequestError(f"unknown sampler {self.sampler!r}; available: {sorted(SAMPLERS)}")
        if self.cache is not None:
            c = self.cache
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c <= 1:
                raise RequestError(
                    f"cache must be a threshold in [0, 1] (e.g. 0.15), or null for off; got {c!r}"
                )
        if not isinstance(self.backward, bool):
            raise RequestError(f"backward must be true or false, got {self.backward!r}")
        self._check_task_fields()
        if self.boxes is not None:
            from tubelet.boxes import parse_boxes

            tracks = parse_boxes(self.boxes, "boxes")
            if self.task not in ("t2v", "i2v", "extend"):
                raise RequestError(f"boxes apply to tasks t2v, i2v and extend, not {self.task!r}")
            if self.num_frames is not None:
                for t in tracks:
                    t.check(num_frames=self.num_frames)
        if check_files:
            for name in _INPUT_FIELDS:
                value = getattr(self, name)
                if value is None:
                    continue
                p = Path(value)
                if not p.exists():
                    raise RequestError(f"{name}: {value}: file not found")
                if p.is_dir():
                    raise RequestError(f"{name}: {value}: is a directory, expected an image or video file")
        return self

    def _check_task_fields(self) -> None:
        allowed = _TASK_FIELDS[self.task]
        for f in fields(self):
            name = f.name
            if name not in set().union(*_TASK_FIELDS.values()) or name in allowed:
                continue
            value = getattr(self, name)
            if value is not None and value is not False:
                users = [t for t, names in _TASK_FIELDS.items() if name in names]
                raise RequestError(f"{name} only applies to task {' / '.join(users)}, not {self.task!r}")
        if self.task == "i2v" and self.image is None and self.last_image is None:
            raise RequestError("task i2v needs an image, a last_image, or both")
        if self.task in ("extend", "edit", "connect") and self.video is None:
            raise RequestError(f"task {self.task} needs a video")
        if self.task == "connect" and self.video_b is None:
            raise RequestError("task connect needs video (clip A) and video_b (clip B)")
        for name in _INPUT_FIELDS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise RequestError(f"{name} must be a file path, got {value!r}")
            if isinstance(value, str) and "\x00" in value:
                raise RequestError(f"{name}: the path {value!r} holds a NUL character")
            if isinstance(value, str):
                _check_text(name, value)

    def inputs(self) -> list[Path]:
        """The input files this request names."""
        return [Path(getattr(self, n)) for n in _INPUT_FIELDS if getattr(self, n) is not None]


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"{name}={value} is out of range: must be in [{lo}, {hi}]")


def _check_text(name: str, text: str) -> None:
    """Prompts must be encodable text: no lone surrogates (they cannot be written as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(f"{name} is not valid text ({e.reason} at position {e.start})") from None

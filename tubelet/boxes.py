"""Box tracks: where each object of the prompt should be, frame by frame (Boximator-style control).

A track binds to one object of the prompt and holds keyframes in normalised image coordinates
(x0, y0) top-left, (x1, y1) bottom-right, in [0, 1]. A *hard* box says the object is exactly there;
a *soft* box says it stays somewhere inside. Between keyframes the box moves linearly; the track
is present from its first keyframe to its last (a first-frame box alone pins the start and leaves
the motion to the text; a track may end early: the object is free afterwards).

JSON (a file for ``tubelet generate --boxes FILE``, the ``boxes`` field of a captions.jsonl line, or
``GenerationRequest.boxes``)::

    {"tracks": [
      {"object": 0, "mode": "hard",
       "keyframes": [{"frame": 0, "x0": 0.1, "y0": 0.4, "x1": 0.3, "y1": 0.6},
                     {"frame": 15, "x0": 0.7, "y0": 0.4, "x1": 0.9, "y1": 0.6}]}
    ]}

A bare list of tracks is accepted too. Inline (``--box``, repeatable), one track per value::

    "OBJECT[ soft]: FRAME:x0,y0,x1,y1 FRAME:x0,y0,x1,y1 ..."
    --box "0: 0:0.1,0.4,0.3,0.6 15:0.7,0.4,0.9,0.6"      object 0 moves left to right
    --box "1 soft: 0:0,0,0.5,1"                          object 1 starts in the left half

`object` is the index of the object in the prompt (0 = the first one the prompt names); a recipe's
text encoder may also resolve a phrase (e.g. "red circle"). Errors name the track and the value.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tubelet.errors import TubeletError

__all__ = [
    "MAX_TRACKS",
    "BoxError",
    "BoxTrack",
    "Keyframe",
    "parse_boxes",
    "parse_inline_box",
    "tracks_to_dict",
]

MAX_TRACKS = 16
MAX_KEYFRAMES = 4096


class BoxError(TubeletError, ValueError):
    """A box track is malformed or does not fit the clip / the prompt (names the track and value)."""


@dataclass(frozen=True)
class Keyframe:
    """The box of one frame: (x0, y0) top-left, (x1, y1) bottom-right, normalised to [0, 1]."""

    frame: int
    x0: float
    y0: float
    x1: float
    y1: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass(frozen=True)
class BoxTrack:
    """Where one object of the prompt is: keyframes in frame order, hard or soft."""

    object: int | str
    keyframes: tuple[Keyframe, ...]
    mode: str = "hard"
    name: str = field(default="", compare=False)  # how errors call it ("track 0")

    @property
    def hard(self) -> bool:
        return self.mode == "hard"

    @property
    def first_frame(self) -> int:
        return self.keyframes[0].frame

    @property
    def last_frame(self) -> int:
        return self.keyframes[-1].frame

    def box_at(self, frame: float) -> tuple[float, float, float, float] | None:
        """The (linearly interpolated) box at `frame`, or None outside [first, last] keyframe."""
        ks = self.keyframes
        if frame < ks[0].frame or frame > ks[-1].frame:
            return None
        for a, b in itertools.pairwise(ks):
            if a.frame <= frame <= b.frame:
                w = (frame - a.frame) / (b.frame - a.frame)
                return tuple(float(p + w * (q - p)) for p, q in zip(a.as_tuple(), b.as_tuple()))  # type: ignore[return-value]
        return ks[-1].as_tuple()

    def check(self, num_frames: int | None = None, num_objects: int | None = None) -> BoxTrack:
        """Errors for keyframes beyond the clip or an object the prompt does not have. Returns self."""
        if num_frames is not None and self.last_frame >= num_frames:
            raise BoxError(
                f"{self.name}: keyframe at frame {self.last_frame} is beyond the clip (frames 0..{num_frames - 1})"
            )
        if num_objects is not None and isinstance(self.object, int) and self.object >= num_objects:
            raise BoxError(
                f"{self.name}: binds to object {self.object}, but the prompt names {num_objects} object(s) "
                f"(0..{num_objects - 1})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": self.object,
            "mode": self.mode,
            "keyframes": [
                {"frame": k.frame, "x0": k.x0, "y0": k.y0, "x1": k.x1, "y1": k.y1} for k in self.keyframes
            ],
        }


def tracks_to_dict(tracks: list[BoxTrack]) -> dict[str, Any]:
    """The JSON form of `tracks` (what `parse_boxes` reads back)."""
    return {"tracks": [t.to_dict() for t in tracks]}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BoxError(f"{where}: expected a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise BoxError(f"{where}: {value!r} is outside [0, 1] (coordinates are fractions of the frame)")
    return float(value)


def _keyframe(obj: Any, where: str) -> Keyframe:
    if isinstance(obj, (list, tuple)) and len(obj) == 5:  # [frame, x0, y0, x1, y1]
        obj = dict(zip(("frame", "x0", "y0", "x1", "y1"), obj))
    if not isinstance(obj, dict):
        raise BoxError(f"{where}: expected {{frame, x0, y0, x1, y1}}, got {obj!r}")
    unknown = sorted(set(obj) - {"frame", "x0", "y0", "x1", "y1"})
    missing = [k for k in ("frame", "x0", "y0", "x1", "y1") if k not in obj]
    if unknown or missing:
        raise BoxError(f"{where}: keys must be frame, x0, y0, x1, y1 (missing {missing}, unknown {unknown})")
    frame = obj["frame"]
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise BoxError(f"{where}: frame must be an integer >= 0, got {frame!r}")
    x0, y0, x1, y1 = (_number(obj[k], f"{where}.{k}") for k in ("x0", "y0", "x1", "y1"))
    if x1 <= x0:
        raise BoxError(f"{where}: x1={x1:g} must be greater than x0={x0:g}")
    if y1 <= y0:
        raise BoxError(f"{where}: y1={y1:g} must be greater than y0={y0:g}")
    return Keyframe(frame, x0, y0, x1, y1)


def _track(obj: Any, name: str) -> BoxTrack:
    if not isinstance(obj, dict):
        raise BoxError(f"{name}: expected an object with 'object' and 'keyframes', got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"object", "keyframes", "mode"})
    if unknown:
        raise BoxError(f"{name}: unknown key(s) {unknown}; a track has object, keyframes, mode")
    target = obj.get("object")
    if isinstance(target, bool) or not (
        (isinstance(target, int) and target >= 0) or (isinstance(target, str) and target.strip())
    ):
        raise BoxError(f"{name}: 'object' must be an object index >= 0 or a phrase, got {target!r}")
    mode = obj.get("mode", "hard")
    if mode not in ("hard", "soft"):
        raise BoxError(f"{name}: mode must be 'hard' or 'soft', got {mode!r}")
    kfs = obj.get("keyframes")
    if not isinstance(kfs, list) or not kfs:
        raise BoxError(f"{name}: 'keyframes' must be a non-empty list")
    if len(kfs) > MAX_KEYFRAMES:
        raise BoxError(f"{name}: {len(kfs)} keyframes; at most {MAX_KEYFRAMES}")
    keyframes = tuple(_keyframe(k, f"{name} keyframe {i}") for i, k in enumerate(kfs))
    for i, (a, b) in enumerate(itertools.pairwise(keyframes), 1):
        if b.frame <= a.frame:
            raise BoxError(
                f"{name} keyframe {i}: frame {b.frame} is not after frame {a.frame} (keyframes go in frame order)"
            )
    return BoxTrack(target, keyframes, mode, name)


def parse_boxes(data: Any, where: str = "boxes") -> list[BoxTrack]:
    """Tracks from the JSON form (a dict with "tracks", or a list of tracks); BoxError when malformed."""
    if isinstance(data, dict):
        if set(data) - {"tracks"}:
            raise BoxError(f"{where}: unknown key(s) {sorted(set(data) - {'tracks'})}; expected 'tracks'")
        data = data.get("tracks")
    if not isinstance(data, list):
        raise BoxError(
            f'{where}: expected a list of tracks (or {{"tracks": [...]}}), got {type(data).__name__}'
        )
    if len(data) > MAX_TRACKS:
        raise BoxError(f"{where}: {len(data)} tracks; at most {MAX_TRACKS}")
    tracks = [_track(t, f"{where}: track {i}") for i, t in enumerate(data)]
    seen: dict[Any, str] = {}
    for t in tracks:
        if t.object in seen:
            raise BoxError(f"{t.name}: object {t.object!r} already has a track ({seen[t.object]})")
        seen[t.object] = t.name
    return tracks


_INLINE = re.compile(r"^\s*(?P<obj>[^:]+?)\s*(?P<soft>\bsoft\b|\bhard\b)?\s*:(?P<rest>.*)$")


def parse_inline_box(text: str, index: int = 0) -> dict[str, Any]:
    """One track of the inline form ``"OBJECT[ soft|hard]: F:x0,y0,x1,y1 ..."`` as its JSON dict."""
    where = f"--box {index}"
    m = _INLINE.match(text)
    if m is None:
        raise BoxError(f"{where}: expected 'OBJECT: FRAME:x0,y0,x1,y1 ...', got {text!r}")
    obj_text = m.group("obj").strip()
    obj: int | str = int(obj_text) if obj_text.isdigit() else obj_text
    keyframes = []
    for part in m.group("rest").split():
        frame, sep, coords = part.partition(":")
        values = coords.split(",")
        if not sep or len(values) != 4 or not frame.isdigit():
            raise BoxError(f"{where}: keyframe {part!r} is not FRAME:x0,y0,x1,y1 (e.g. 0:0.1,0.4,0.3,0.6)")
        try:
            x0, y0, x1, y1 = (float(v) for v in values)
        except ValueError:
            raise BoxError(f"{where}: keyframe {part!r}: coordinates must be numbers") from None
        keyframes.append({"frame": int(frame), "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    return {"object": obj, "mode": m.group("soft") or "hard", "keyframes": keyframes}


def track_arrays(tracks: list[BoxTrack], frames: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (N, T, 4) float32, present (N, T) bool, hard (N,) bool) sampled at `frames` (T times)."""
    n, t = len(tracks), len(frames)
    boxes = np.zeros((n, t, 4), np.float32)
    present = np.zeros((n, t), bool)
    for i, track in enumerate(tracks):
        for j, f in enumerate(frames):
            b = track.box_at(f)
            if b is not None:
                boxes[i, j], present[i, j] = b, True
    hard = np.array([tr.hard for tr in tracks], bool)
    return boxes, present, hard


# distinct colours for the tracks of a preview (RGB)
_COLOURS = [(0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 255, 0), (255, 255, 255), (255, 140, 0)]


def draw_boxes(frames: np.ndarray, tracks: list[BoxTrack], thickness: int = 1) -> np.ndarray:
    """A copy of uint8 frames (T, H, W, 3) with each track's box drawn where it is present.

    Hard boxes are solid outlines, soft boxes dashed; each track has its own colour.
    """
    out = np.array(frames, copy=True)
    t_len, h, w = out.shape[:3]
    for i, track in enumerate(tracks):
        colour = np.array(_COLOURS[i % len(_COLOURS)], np.uint8)
        for t in range(t_len):
            b = track.box_at(t)
            if b is None:
                continue
            x0, x1 = (min(w - 1, max(0, round(v * w - 0.5))) for v in (b[0], b[2]))
            y0, y1 = (min(h - 1, max(0, round(v * h - 0.5))) for v in (b[1], b[3]))
            keep_x = np.ones(x1 - x0 + 1, bool)
            keep_y = np.ones(y1 - y0 + 1, bool)
            if not track.hard:  # dashed: 3 on, 2 off
                keep_x = (np.arange(x1 - x0 + 1) % 5) < 3
                keep_y = (np.arange(y1 - y0 + 1) % 5) < 3
            for k in range(thickness):
                for y in (min(h - 1, y0 + k), max(0, y1 - k)):
                    row = out[t, y, x0 : x1 + 1]
                    row[keep_x] = colour
                for x in (min(w - 1, x0 + k), max(0, x1 - k)):
                    col = out[t, y0 : y1 + 1, x]
                    col[keep_y] = colour
    return out

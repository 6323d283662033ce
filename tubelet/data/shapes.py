"""The shapes world: a deterministic synthetic video generator with a bilingual caption grammar.

A clip shows 1 to 3 flat coloured shapes (circle, square, apex-up triangle) in three sizes on a
black, white or gray background. Each object either stays still or moves at constant velocity
left, right, up or down, travelling at least 30% of the frame and staying fully inside it.
Objects never overlap at any instant. Every clip comes with a canonical caption in English and
Chinese; `parse_caption` reads both languages (and the wordings produced by `paraphrase`) back
into the same `PromptSpec`.

Everything random takes an explicit `numpy.random.Generator` (PCG64): the same seed gives the same
scene, caption and (noise-free) pixels on any machine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.errors import CaptionError, DataError

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "MAX_OBJECTS",
    "MIN_TRAVEL",
    "MOTIONS",
    "SHAPES",
    "SIZES",
    "ObjectSpec",
    "PromptSpec",
    "Scene",
    "SceneObject",
    "ShapesClip",
    "caption",
    "detect_language",
    "make_clip",
    "object_coverage",
    "paraphrase",
    "parse_caption",
    "render",
    "sample_scene",
    "scene_for_spec",
    "write_dataset",
]

# --------------------------------------------------------------------------------------------
# The world's vocabulary
# --------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# side (square, triangle base and height) or diameter, as a fraction of the frame's short side
SIZES: dict[str, float] = {"small": 0.15, "medium": 0.24, "big": 0.35}
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}
MAX_OBJECTS = 3
MIN_TRAVEL = 0.30  # a moving object's displacement, as a fraction of the frame along its axis
EDGE_MARGIN = 0.02  # keep objects this far (fraction of the frame) from the border
GAP = 0.07  # minimum gap between two objects' boxes, as a fraction of the short side
SUPERSAMPLE = 4  # anti-aliasing: SUPERSAMPLE x SUPERSAMPLE samples per pixel

# Canonical Chinese words.
ZH_SIZES = {"small": "小的", "big": "大的"}
ZH_COLORS = {
    "red": "红色",
    "green": "绿色",
    "blue": "蓝色",
    "yellow": "黄色",
    "purple": "紫色",
    "orange": "橙色",
}
ZH_SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
ZH_MOTIONS = {
    "left": "向左移动",
    "right": "向右移动",
    "up": "向上移动",
    "down": "向下移动",
    "still": "静止不动",
}
ZH_BACKGROUNDS = {"black": "黑色", "white": "白色", "gray": "灰色"}

_DIRECTIONS = ("left", "right", "up", "down")


# --------------------------------------------------------------------------------------------
# Prompt specs
# --------------------------------------------------------------------------------------------


def _check_word(kind: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise CaptionError(f"unknown {kind} {value!r}; valid: {', '.join(allowed)}")


@dataclass(frozen=True)
class ObjectSpec:
    """One object named by a prompt. `size="medium"` means the caption names no size."""

    color: str
    shape: str
    size: str = "medium"
    motion: str = "still"

    def __post_init__(self) -> None:
        _check_word("color", self.color, tuple(COLORS))
        _check_word("shape", self.shape, SHAPES)
        _check_word("size", self.size, tuple(SIZES))
        _check_word("motion", self.motion, MOTIONS)

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectSpec:
        unknown = set(d) - {"color", "shape", "size", "motion"}
        if unknown:
            raise CaptionError(
                f"unknown object field(s) {sorted(unknown)}; valid: color, shape, size, motion"
            )
        return cls(**d)


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for: 1 to 3 objects and optionally a background (None = not named)."""

    objects: tuple[ObjectSpec, ...]
    background: str | None = None

    def __post_init__(self) -> None:
        objs = tuple(self.objects)
        object.__setattr__(self, "objects", objs)
        if not 1 <= len(objs) <= MAX_OBJECTS:
            raise CaptionError(f"a prompt names 1 to {MAX_OBJECTS} objects, got {len(objs)}")
        for o in objs:
            if not isinstance(o, ObjectSpec):
                raise CaptionError(f"expected ObjectSpec items, got {o!r}")
        if self.background is not None:
            _check_word("background", self.background, tuple(BACKGROUNDS))

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects], "background": self.background}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptSpec:
        unknown = set(d) - {"objects", "background"}
        if unknown:
            raise CaptionError(f"unknown prompt field(s) {sorted(unknown)}; valid: objects, background")
        return cls(tuple(ObjectSpec.from_dict(o) for o in d["objects"]), d.get("background"))


# --------------------------------------------------------------------------------------------
# Canonical captions
# --------------------------------------------------------------------------------------------


def _caption_object_en(o: ObjectSpec) -> str:
    size = "" if o.size == "medium" else f"{o.size} "
    motion = "staying still" if o.motion == "still" else f"moving {o.motion}"
    return f"a {size}{o.color} {o.shape} {motion}"


def _caption_object_zh(o: ObjectSpec) -> str:
    size = ZH_SIZES.get(o.size, "")
    return f"一个{size}{ZH_COLORS[o.color]}{ZH_SHAPES[o.shape]}{ZH_MOTIONS[o.motion]}"


def caption(spec: PromptSpec, lang: str = "en") -> str:
    """The canonical caption of `spec` in English (`"en"`) or Chinese (`"zh"`).

    English: ``a [small|big] <color> <shape> moving <dir>|staying still`` joined by `` and ``, with
    an optional ``, on a <bg> background``. Chinese: ``一个[小的|大的]<颜色><形状><运动>`` joined by
    ``和``, with an optional ``，<背景色>背景``.
    """
    if lang == "en":
        text = " and ".join(_caption_object_en(o) for o in spec.objects)
        if spec.background is not None:
            text += f", on a {spec.background} background"
        return text
    if lang == "zh":
        text = "和".join(_caption_object_zh(o) for o in spec.objects)
        if spec.background is not None:
            text += f"，{ZH_BACKGROUNDS[spec.background]}背景"
        return text
    raise CaptionError(f"unknown caption language {lang!r}; valid: en, zh")


# --------------------------------------------------------------------------------------------
# Parsing (English and Chinese, canonical and paraphrased wordings)
# --------------------------------------------------------------------------------------------

# English token -> (category, value)
_EN_WORDS: dict[str, tuple[str, str]] = {}


def _en(category: str, value: str, *words: str) -> None:
    for w in words:
        _EN_WORDS[w] = (category, value)


_en("article", "", "a", "an", "one")
_en("size", "small", "small", "little", "tiny")
_en("size", "medium", "medium")
_en("size", "big", "big", "large", "huge")
for _c in COLORS:
    _en("color", _c, _c)
_en("color", "purple", "violet")
_en("shape", "circle", "circle", "ball", "disc", "disk", "dot")
_en("shape", "square", "square", "box", "block")
_en("shape", "triangle", "triangle")
_en("move", "", "moving", "moves", "move", "going", "goes", "heading", "heads", "sliding", "slides")
_en("move", "", "drifting", "drifts", "travelling", "traveling", "travels", "gliding", "glides")
_en("direction", "left", "left", "leftward", "leftwards")
_en("direction", "right", "right", "rightward", "rightwards")
_en("direction", "up", "up", "upward", "upwards")
_en("direction", "down", "down", "downward", "downwards")
_en("still", "", "still", "stationary", "motionless", "rest", "resting", "not")
_en("stay", "", "staying", "stays", "stay", "standing", "stands", "sitting", "sits", "remaining", "remains")
_en("filler", "", "that", "which", "is", "to", "the", "towards", "toward", "at")
_en("and", "", "and")
_en("sep", "", ",")
_en("bgword", "", "background", "backdrop")
_en("bgprep", "", "on", "against", "with")
for _b in BACKGROUNDS:
    _en("bgcolor", _b, _b)
_en("bgcolor", "gray", "grey")

# Chinese token -> (category, value); tokenised by greedy longest match.
_ZH_WORDS: dict[str, tuple[str, str]] = {}


def _zh(category: str, value: str, *words: str) -> None:
    for w in words:
        _ZH_WORDS[w] = (category, value)


_zh("article", "", "一个", "一只", "一块")
_zh("size", "small", "小的", "小", "较小的")
_zh("size", "big", "大的", "大", "较大的")
_zh("size", "medium", "中等大小的", "中等的")
for _c, _w in ZH_COLORS.items():
    _zh("color", _c, _w, _w[0])
_zh("color", "orange", "橘色")
_zh("shape", "circle", "圆形", "圆", "圆圈", "球", "圆球", "圆盘")
_zh("shape", "square", "正方形", "方形", "方块", "正方块")
_zh("shape", "triangle", "三角形", "三角")
_zh("filler", "", "向", "往", "朝", "的", "正在", "在", "着", "地", "是", "有")
_zh("move", "", "移动", "运动", "滑动", "移", "走", "动", "飘")
_zh("direction", "left", "左")
_zh("direction", "right", "右")
_zh("direction", "up", "上")
_zh("direction", "down", "下")
_zh("still", "", "静止不动", "静止", "不动", "一动不动", "原地不动", "停着")
_zh("and", "", "和", "以及", "还有", "与")
_zh("bgword", "", "背景", "底色")
for _b, _w in ZH_BACKGROUNDS.items():
    _zh("bgcolor", _b, _w, _w[0])
_ZH_MAXLEN = max(len(w) for w in _ZH_WORDS)

_EN_VOCAB = (
    "sizes: small, big (none = medium); colors: "
    + ", ".join(COLORS)
    + "; shapes: "
    + ", ".join(SHAPES)
    + "; motions: moving left, moving right, moving up, moving down, staying still; "
    "backgrounds: on a black|white|gray background"
)
_ZH_VOCAB = (
    "sizes: 小的, 大的; colors: "
    + ", ".join(ZH_COLORS.values())
    + "; shapes: "
    + ", ".join(ZH_SHAPES.values())
    + "; motions: "
    + ", ".join(ZH_MOTIONS.values())
    + "; backgrounds: "
    + ", ".join(f"{w}背景" for w in ZH_BACKGROUNDS.values())
)
_VOCAB_MESSAGE = f"vocabulary: English {_EN_VOCAB}. Chinese {_ZH_VOCAB}"

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def detect_language(text: str) -> str:
    """`"zh"` if the text contains any CJK ideograph, else `"en"`."""
    return "zh" if _CJK.search(text) else "en"


def _unknown(word: str, text: str) -> CaptionError:
    return CaptionError(f"unknown word {word!r} in caption {text!r}; {_VOCAB_MESSAGE}")


def _tokens_en(part: str, text: str) -> list[tuple[str, str, str]]:
    out = []
    for w in re.findall(r"[a-z]+|\S", part):
        if w not in _EN_WORDS:
            raise _unknown(w, text)
        out.append((w, *_EN_WORDS[w]))
    return out


def _tokens_zh(part: str, text: str) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    i = 0
    while i < len(part):
        for n in range(min(_ZH_MAXLEN, len(part) - i), 0, -1):
            w = part[i : i + n]
            if w in _ZH_WORDS:
                out.append((w, *_ZH_WORDS[w]))
                i += n
                break
        else:
            j = i + 1  # the unknown stretch runs to the next known word
            while j < len(part) and not any(part[j : j + n] in _ZH_WORDS for n in range(1, _ZH_MAXLEN + 1)):
                j += 1
            raise _unknown(part[i:j], text)
    return out


def _parse_background(tokens: list[tuple[str, str, str]], text: str) -> str:
    colors = [v for _, cat, v in tokens if cat == "bgcolor"]
    words = [w for w, cat, _ in tokens if cat == "bgword"]
    allowed = {"bgcolor", "bgword", "bgprep", "article", "filler"}
    for w, cat, _ in tokens:
        if cat not in allowed:
            raise CaptionError(f"unexpected word {w!r} in the background part of {text!r}; {_VOCAB_MESSAGE}")
    if len(colors) != 1 or len(words) != 1:
        raise CaptionError(
            f"the background part of {text!r} must name one background colour "
            f"(black, white, gray / 黑色, 白色, 灰色); {_VOCAB_MESSAGE}"
        )
    return colors[0]


def _parse_object(tokens: list[tuple[str, str, str]], text: str) -> ObjectSpec:
    phrase = " ".join(w for w, _, _ in tokens) if tokens else ""
    found: dict[str, list[str]] = {}
    for w, cat, v in tokens:
        if cat in ("bgcolor", "bgword", "bgprep"):
            raise CaptionError(f"unexpected word {w!r} in object {phrase!r} of {text!r}; {_VOCAB_MESSAGE}")
        found.setdefault(cat, []).append(v)
    for cat in ("color", "shape"):
        if len(found.get(cat, [])) != 1:
            raise CaptionError(
                f"object {phrase!r} in caption {text!r} must name exactly one {cat}; {_VOCAB_MESSAGE}"
            )
    if len(found.get("size", [])) > 1 or len(found.get("direction", [])) > 1:
        raise CaptionError(f"object {phrase!r} in caption {text!r} names two sizes or two directions")
    directions = found.get("direction", [])
    still = bool(found.get("still"))
    if directions and (still or found.get("stay")):
        raise CaptionError(f"object {phrase!r} in caption {text!r} is both moving and still")
    if directions:
        motion = directions[0]
    elif still:
        motion = "still"
    else:
        raise CaptionError(
            f"object {phrase!r} in caption {text!r} names no motion; expected 'moving left|right|up|down' "
            "or 'staying still' (向左移动, 向右移动, 向上移动, 向下移动, 静止不动)"
        )
    size = found.get("size", ["medium"])[0]
    return ObjectSpec(color=found["color"][0], shape=found["shape"][0], size=size, motion=motion)


def _split_objects(tokens: list[tuple[str, str, str]], text: str) -> list[ObjectSpec]:
    chunks: list[list[tuple[str, str, str]]] = [[]]
    for tok in tokens:
        if tok[1] == "and" or tok[0] == ",":
            chunks.append([])
        else:
            chunks[-1].append(tok)
    chunks = [c for c in chunks if c]
    if not chunks:
        raise CaptionError(f"caption {text!r} names no object; {_VOCAB_MESSAGE}")
    if len(chunks) > MAX_OBJECTS:
        raise CaptionError(f"caption {text!r} names {len(chunks)} objects; at most {MAX_OBJECTS} are allowed")
    return [_parse_object(c, text) for c in chunks]


def parse_caption(text: str) -> PromptSpec:
    """Parse a caption in either language (auto-detected) into a `PromptSpec`.

    Tolerates case, extra whitespace, a trailing period and the paraphrased wordings produced by
    `paraphrase`. Raises `CaptionError` quoting the offending word and listing the vocabulary.
    """
    if not isinstance(text, str) or not text.strip():
        raise CaptionError(f"empty caption {text!r}; {_VOCAB_MESSAGE}")
    lang = detect_language(text)
    if lang == "en":
        norm = " ".join(text.lower().split()).rstrip(" .!")
        tokens = _tokens_en(norm, text)
    else:
        norm = "".join(text.split()).rstrip("。.!！")
        norm = norm.replace("，", ",").replace("、", ",").replace("；", ",")
        tokens = []
        for k, piece in enumerate(norm.split(",")):
            if k:
                tokens.append((",", "sep", ""))
            tokens.extend(_tokens_zh(piece, text))
    # Split off a background clause: the last comma-separated part that names a background,
    # or (no comma) everything from the preposition / colour before the word "background".
    bg_idx = [i for i, t in enumerate(tokens) if t[1] == "bgword"]
    background = None
    head = tokens
    if bg_idx:
        commas = [i for i, t in enumerate(tokens) if t[0] == ","]
        start = None
        if commas and commas[-1] < bg_idx[-1]:
            start = commas[-1]
        else:
            # walk back from the background word over background-clause words
            start = bg_idx[-1]
            while start > 0 and tokens[start - 1][1] in ("bgcolor", "bgprep", "article", "filler", "bgword"):
                start -= 1
        clause = [t for t in tokens[start:] if t[0] != ","]
        if lang == "zh":
            # Chinese fillers like 在 ... 上 around the background: treat 上 as filler there
            clause = [(w, "filler", "") if cat == "direction" else (w, cat, v) for w, cat, v in clause]
        background = _parse_background(clause, text)
        head = tokens[:start]
    objects = _split_objects(head, text)
    return PromptSpec(tuple(objects), background)


# --------------------------------------------------------------------------------------------
# Paraphrases (training-time wording variety; all parse back to the same spec)
# --------------------------------------------------------------------------------------------

_EN_SIZE_WORDS = {"small": ("small", "little", "tiny"), "big": ("big", "large", "huge"), "medium": ("",)}
_EN_SHAPE_WORDS = {"circle": ("circle", "ball", "disc", "dot"), "square": ("square", "box", "block"),
                   "triangle": ("triangle",)}  # fmt: skip
_EN_MOVE = ("moving {d}", "going {d}", "heading {d}", "sliding {d}", "moving to the {d}", "drifting {d}",
            "that moves {d}", "travelling {d}")  # fmt: skip
_EN_VERTICAL = ("moving {d}", "going {d}", "heading {d}", "sliding {d}", "drifting {d}", "that moves {d}",
                "moving {d}ward", "travelling {d}wards")  # fmt: skip
_EN_STILL = ("staying still", "standing still", "that stays still", "not moving", "at rest", "sitting still",
             "remaining motionless", "that is stationary")  # fmt: skip
_EN_BG = (", on a {b} background", ", against a {b} backdrop", " on a {b} background", ", with a {b} background",
          ", on the {b} background")  # fmt: skip
_ZH_SIZE_WORDS = {"small": ("小的", "小", "较小的"), "big": ("大的", "大", "较大的"), "medium": ("",)}
_ZH_SHAPE_WORDS = {"circle": ("圆形", "圆", "圆圈", "球"), "square": ("正方形", "方块", "方形"),
                   "triangle": ("三角形", "三角")}  # fmt: skip
_ZH_DIR = {"left": "左", "right": "右", "up": "上", "down": "下"}
_ZH_MOVE = ("向{d}移动", "往{d}移动", "朝{d}移动", "向{d}运动", "向{d}滑动", "正在向{d}移动", "往{d}走")
_ZH_STILL = ("静止不动", "一动不动", "原地不动", "静止", "停着", "不动")
_ZH_BG = ("，{b}背景", "，背景是{b}的", "，在{b}背景上", "，{b}的背景")
_ZH_AND = ("和", "以及", "还有")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def paraphrase(spec: PromptSpec, lang: str = "en", rng: np.random.Generator | None = None) -> str:
    """A random non-canonical wording of `spec` (e.g. "a red ball going right") that parses back to it."""
    if rng is None:
        rng = np.random.Generator(np.random.PCG64(0))
    parts = []
    if lang == "en":
        for o in spec.objects:
            size = _pick(rng, _EN_SIZE_WORDS[o.size])
            color = "violet" if o.color == "purple" and rng.random() < 0.3 else o.color
            words = [w for w in (size, color, _pick(rng, _EN_SHAPE_WORDS[o.shape])) if w]
            article = "an" if words[0][0] in "aeiou" else "a"
            if o.motion == "still":
                motion = _pick(rng, _EN_STILL)
            else:
                motion = _pick(rng, _EN_MOVE if o.motion in ("left", "right") else _EN_VERTICAL)
                motion = motion.format(d=o.motion)
            parts.append(" ".join([article, *words, motion]))
        text = " and ".join(parts)
        if spec.background is not None:
            bg = "grey" if spec.background == "gray" and rng.random() < 0.5 else spec.background
            text += _pick(rng, _EN_BG).format(b=bg)
        return text
    if lang == "zh":
        for o in spec.objects:
            size = _pick(rng, _ZH_SIZE_WORDS[o.size])
            color = ZH_COLORS[o.color] + ("的" if rng.random() < 0.5 else "")
            shape = _pick(rng, _ZH_SHAPE_WORDS[o.shape])
            if o.motion == "still":
                motion = _pick(rng, _ZH_STILL)
            else:
                motion = _pick(rng, _ZH_MOVE).format(d=_ZH_DIR[o.motion])
            parts.append(f"一个{size}{color}{shape}{motion}")
        text = parts[0]
        for p in parts[1:]:
            text += _pick(rng, _ZH_AND) + p
        if spec.background is not None:
            text += _pick(rng, _ZH_BG).format(b=ZH_BACKGROUNDS[spec.background])
        return text
    raise CaptionError(f"unknown caption language {lang!r}; valid: en, zh")


# --------------------------------------------------------------------------------------------
# Scenes: a prompt spec realised as a layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One placed object. Positions are the centre of its bounding box as (x, y) fractions of the
    frame width / height (y = 0 is the top row), at the first (`start`) and last (`end`) frame."""

    spec: ObjectSpec
    start: tuple[float, float]
    end: tuple[float, float]

    def position(self, u: float) -> tuple[float, float]:
        """Centre at clip time `u` in [0, 1] (constant velocity)."""
        return (
            self.start[0] + (self.end[0] - self.start[0]) * u,
            self.start[1] + (self.end[1] - self.start[1]) * u,
        )


def _extent(size: str, aspect: float) -> tuple[float, float]:
    """Object box (width, height) as fractions of the frame for a frame of aspect W/H."""
    short = min(1.0, aspect)  # short side in units of the frame height
    s = SIZES[size] * short
    return s / aspect, s


@dataclass
class Scene:
    """A laid-out clip: the prompt it realises, the actual background, and the placed objects.

    `aspect` is the frame's width / height the layout was made for; render at any resolution with
    that aspect ratio.
    """

    spec: PromptSpec
    background: str
    objects: tuple[SceneObject, ...]
    aspect: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        objs = []
        for o in self.objects:
            w, h = _extent(o.spec.size, self.aspect)
            objs.append(
                {
                    **o.spec.to_dict(),
                    "start": [float(o.start[0]), float(o.start[1])],
                    "end": [float(o.end[0]), float(o.end[1])],
                    "extent": [w, h],
                }
            )
        return {
            "spec": self.spec.to_dict(),
            "background": self.background,
            "aspect": self.aspect,
            "objects": objs,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        objs = tuple(
            SceneObject(
                ObjectSpec(o["color"], o["shape"], o["size"], o["motion"]),
                (float(o["start"][0]), float(o["start"][1])),
                (float(o["end"][0]), float(o["end"][1])),
            )
            for o in d["objects"]
        )
        bg = d["background"]
        _check_word("background", bg, tuple(BACKGROUNDS))
        return cls(PromptSpec.from_dict(d["spec"]), bg, objs, float(d.get("aspect", 1.0)))


def _overlap_times(a: np.ndarray, b: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Times t in [0, 1] with |a + b t| < s, per candidate: (lo, hi), empty where lo > hi."""
    moving = np.abs(b) > 1e-12
    safe_b = np.where(moving, b, 1.0)
    t0, t1 = (-s - a) / safe_b, (s - a) / safe_b
    lo = np.where(moving, np.maximum(np.minimum(t0, t1), 0.0), np.where(np.abs(a) < s, 0.0, 1.0))
    hi = np.where(moving, np.minimum(np.maximum(t0, t1), 1.0), np.where(np.abs(a) < s, 1.0, 0.0))
    return lo, hi


def _collide(start: np.ndarray, end: np.ndarray, size: str, q: SceneObject, aspect: float) -> np.ndarray:
    """Whether candidate boxes (centres start/end: (M, 2)) of `size` come closer than the gap to the
    placed object `q` at any time t in [0, 1]: bool (M,). Exact for linear motion."""
    pw, ph = _extent(size, aspect)
    qw, qh = _extent(q.spec.size, aspect)
    short = min(1.0, aspect)
    reach = ((pw + qw) / 2 + GAP * short / aspect, (ph + qh) / 2 + GAP * short)
    hit = np.ones(len(start), bool)
    lo_all, hi_all = np.zeros(len(start)), np.ones(len(start))
    for k in (0, 1):
        a = start[:, k] - q.start[k]
        b = (end[:, k] - start[:, k]) - (q.end[k] - q.start[k])
        lo, hi = _overlap_times(a, b, reach[k])
        hit &= lo <= hi
        lo_all, hi_all = np.maximum(lo_all, lo), np.minimum(hi_all, hi)
    return hit & (lo_all <= hi_all)


def _candidates(
    o: ObjectSpec, aspect: float, rng: np.random.Generator, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """`m` random placements of `o` inside the frame: start and end centres, (m, 2) each."""
    w, h = _extent(o.size, aspect)
    lo_x, hi_x = w / 2 + EDGE_MARGIN, 1 - w / 2 - EDGE_MARGIN
    lo_y, hi_y = h / 2 + EDGE_MARGIN, 1 - h / 2 - EDGE_MARGIN
    if o.motion == "still":
        pos = np.stack([rng.uniform(lo_x, hi_x, m), rng.uniform(lo_y, hi_y, m)], 1)
        return pos, pos.copy()
    horizontal = o.motion in ("left", "right")
    lo, hi = (lo_x, hi_x) if horizontal else (lo_y, hi_y)
    travel = rng.uniform(MIN_TRAVEL, max(MIN_TRAVEL, hi - lo), m)
    a = lo + rng.random(m) * (hi - lo - travel)  # the lower of the two endpoints
    cross = rng.uniform(lo_y, hi_y, m) if horizontal else rng.uniform(lo_x, hi_x, m)
    forward = o.motion in ("right", "down")  # increasing coordinate
    p0, p1 = (a, a + travel) if forward else (a + travel, a)
    if horizontal:
        return np.stack([p0, cross], 1), np.stack([p1, cross], 1)
    return np.stack([cross, p0], 1), np.stack([cross, p1], 1)


def _layout(
    spec: PromptSpec, aspect: float, rng: np.random.Generator, restarts: int = 20, tries: int = 512
) -> tuple[SceneObject, ...] | None:
    """Random non-overlapping placements for the prompt's objects, or None if none was found."""
    for o in spec.objects:
        w, h = _extent(o.size, aspect)
        span = (1 - w if o.motion in ("left", "right") else 1 - h) - 2 * EDGE_MARGIN
        if o.motion != "still" and span < MIN_TRAVEL:
            return None

    # place the most constrained objects (big movers) first; keep the prompt's order in the result
    def difficulty(i: int) -> float:
        o = spec.objects[i]
        s = SIZES[o.size]
        return s * (s + MIN_TRAVEL) if o.motion != "still" else s * s

    order = sorted(range(len(spec.objects)), key=lambda i: -difficulty(i))
    for _ in range(restarts):
        placed: dict[int, SceneObject] = {}
        for i in order:
            o = spec.objects[i]
            m = 1 if not placed else tries  # the first object can go anywhere
            start, end = _candidates(o, aspect, rng, m)
            ok = np.ones(m, bool)
            for q in placed.values():
                ok &= ~_collide(start, end, o.size, q, aspect)
            good = np.flatnonzero(ok)
            if len(good) == 0:
                break
            j = int(good[0])
            placed[i] = SceneObject(
                o, (float(start[j, 0]), float(start[j, 1])), (float(end[j, 0]), float(end[j, 1]))
            )
        if len(placed) == len(spec.objects):
            return tuple(placed[i] for i in range(len(spec.objects)))
    return None


def _check_aspect(aspect: float) -> float:
    aspect = float(aspect)
    if not 0.25 <= aspect <= 4.0:
        raise ValueError(f"frame aspect ratio (width / height) must be in [0.25, 4], got {aspect}")
    return aspect


def scene_for_spec(spec: PromptSpec, rng: np.random.Generator, *, aspect: float = 1.0) -> Scene:
    """A random non-overlapping layout realising `spec` (the background is drawn if not named).

    Raises `CaptionError` when the prompt cannot be laid out (e.g. three big objects all moving
    sideways do not fit in one frame).
    """
    aspect = _check_aspect(aspect)
    bg = spec.background
    if bg is None:
        bg = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    objects = _layout(spec, aspect, rng)
    if objects is None:
        raise CaptionError(
            f"cannot lay out {caption(spec)!r} without overlaps (moving objects travel >= "
            f"{MIN_TRAVEL:.0%} of the frame); use fewer, smaller or still objects"
        )
    return Scene(spec, bg, objects, aspect)


def sample_scene(
    rng: np.random.Generator,
    *,
    num_objects: int | None = None,
    name_background: float = 0.5,
    aspect: float = 1.0,
) -> Scene:
    """Draw a random scene: 1-3 objects (uniform, or `num_objects`), every attribute uniform, the
    background uniform and named in the caption with probability `name_background`.

    Attribute draws that cannot be laid out (three-object scenes with several big movers, e.g. three
    big objects moving sideways) are redrawn with the same object count, so big moving objects are
    somewhat rarer in three-object scenes than a uniform draw would make them."""
    aspect = _check_aspect(aspect)
    if num_objects is not None and not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in 1..{MAX_OBJECTS}, got {num_objects}")
    colors, sizes = tuple(COLORS), tuple(SIZES)
    n = num_objects if num_objects is not None else int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(1000):
        objs = tuple(
            ObjectSpec(
                color=colors[int(rng.integers(len(colors)))],
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                size=sizes[int(rng.integers(len(sizes)))],
                motion=MOTIONS[int(rng.integers(len(MOTIONS)))],
            )
            for _ in range(n)
        )
        bg = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        named = rng.random() < name_background
        spec = PromptSpec(objs, bg if named else None)
        placed = _layout(spec, aspect, rng)
        if placed is not None:
            return Scene(spec, bg, placed, aspect)
    raise DataError(
        f"could not lay out a scene with {num_objects} objects at aspect {aspect}"
    )  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _frame_size(size: int | tuple[int, int] | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
        h, w = (int(v) for v in size)
    if h < 8 or w < 8:
        raise ValueError(f"frame size must be at least 8x8 pixels, got (H, W) = ({h}, {w})")
    return h, w


def _coverage_patch(o: SceneObject, u: float, h: int, w: int) -> tuple[int, int, np.ndarray] | None:
    """Anti-aliased coverage of object `o` at time u: (row0, col0, patch (h', w') float32 in [0, 1])."""
    short = min(h, w)
    r = SIZES[o.spec.size] * short / 2  # half side / radius in pixels
    fx, fy = o.position(u)
    cx, cy = fx * w, fy * h
    x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)), w)
    y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)), h)
    if x1 <= x0 or y1 <= y0:
        return None
    ss = SUPERSAMPLE
    xs = x0 + (np.arange((x1 - x0) * ss) + 0.5) / ss - cx  # (w' * ss,) sample offsets from the centre
    ys = y0 + (np.arange((y1 - y0) * ss) + 0.5) / ss - cy  # (h' * ss,)
    dx, dy = xs[None, :], ys[:, None]
    if o.spec.shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif o.spec.shape == "square":
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    else:  # isosceles triangle, apex up: base 2r at the bottom, height 2r
        inside = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    counts = inside.reshape(y1 - y0, ss, x1 - x0, ss).sum(axis=(1, 3))  # (h', w') exact integers
    return y0, x0, counts.astype(np.float32) / np.float32(ss * ss)


def _times(frames: int) -> list[float]:
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return [k / (frames - 1) if frames > 1 else 0.0 for k in range(frames)]


def _check_scene_size(scene: Scene, h: int, w: int) -> None:
    if abs(w / h - scene.aspect) > 0.02 * scene.aspect:
        raise ValueError(
            f"scene was laid out for aspect (W/H) {scene.aspect:.3f} but the frame size (H, W) = ({h}, {w}) "
            f"has aspect {w / h:.3f}; sample the scene with aspect={w / h:.3f}"
        )


def object_coverage(scene: Scene, *, frames: int = 17, size: int | tuple[int, int] = 64) -> np.ndarray:
    """Per-object anti-aliased coverage, float32 (N, T, H, W) in [0, 1] (for tests and analysis)."""
    h, w = _frame_size(size)
    _check_scene_size(scene, h, w)
    out = np.zeros((len(scene.objects), frames, h, w), np.float32)
    for t, u in enumerate(_times(frames)):
        for i, o in enumerate(scene.objects):
            patch = _coverage_patch(o, u, h, w)
            if patch is not None:
                y0, x0, a = patch
                out[i, t, y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]] = a
    return out


def render(
    scene: Scene,
    *,
    frames: int = 17,
    size: int | tuple[int, int] = 64,
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Render `scene` as uint8 (T, H, W, 3) frames.

    Edges are anti-aliased by 4x4 supersampling; object interiors have the exact palette colour.
    `noise` is the standard deviation of added Gaussian pixel noise in 8-bit levels (0-255), drawn
    from `rng` (a fixed-seed generator if None). `size` is an int (square) or (height, width).
    """
    h, w = _frame_size(size)
    _check_scene_size(scene, h, w)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    times = _times(frames)
    bg = np.asarray(BACKGROUNDS[scene.background], np.float32)
    video = np.empty((frames, h, w, 3), np.float32)  # (T, H, W, 3)
    video[:] = bg
    for t, u in enumerate(times):
        for o in scene.objects:
            patch = _coverage_patch(o, u, h, w)
            if patch is None:
                continue
            y0, x0, a = patch
            a = a[..., None]  # (h', w', 1)
            region = video[t, y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]]
            color = np.asarray(COLORS[o.spec.color], np.float32)
            region[:] = region * (np.float32(1) - a) + color * a
    if noise > 0:
        if rng is None:
            rng = np.random.Generator(np.random.PCG64(0))
        video += rng.standard_normal(video.shape, dtype=np.float32) * np.float32(noise)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Clips and datasets
# --------------------------------------------------------------------------------------------


@dataclass
class ShapesClip:
    """A rendered clip with its scene and canonical captions ({"en": ..., "zh": ...})."""

    frames: np.ndarray  # uint8 (T, H, W, 3)
    scene: Scene
    captions: dict[str, str]
    fps: float = 8.0
    seed: Any = field(default=None)


def make_clip(
    seed: int | Sequence[int],
    *,
    frames: int = 17,
    size: int | tuple[int, int] = 64,
    fps: float = 8.0,
    noise: float = 0.0,
) -> ShapesClip:
    """The clip for `seed` (an int or a tuple of ints, e.g. (dataset_seed, index)).

    The scene depends only on the seed and the frame aspect ratio; the noise has its own stream, so
    the same seed gives the same scene with or without noise.
    """
    h, w = _frame_size(size)
    entropy = int(seed) if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    scene_ss, noise_ss = np.random.SeedSequence(entropy).spawn(2)
    scene = sample_scene(np.random.Generator(np.random.PCG64(scene_ss)), aspect=w / h)
    pixels = render(
        scene, frames=frames, size=(h, w), noise=noise, rng=np.random.Generator(np.random.PCG64(noise_ss))
    )
    caps = {"en": caption(scene.spec, "en"), "zh": caption(scene.spec, "zh")}
    return ShapesClip(pixels, scene, caps, float(fps), seed)


MARKER = "shapes.json"
_VIDEO_NAME = re.compile(r"^\d{6,}\.mp4$")


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DataError(
                f"{out}: directory is not empty and is not a shapes dataset (no {MARKER}); "
                "refusing to write into it. Choose an empty or new directory."
            )
        # A previous shapes dataset: remove only the files this writer owns.
        videos = out / "videos"
        if videos.is_dir():
            for p in videos.iterdir():
                if p.is_file() and _VIDEO_NAME.match(p.name):
                    p.unlink()
        for name in (
            "captions.jsonl",
            "scenes.jsonl",
            "captions.jsonl.tmp",
            "scenes.jsonl.tmp",
            "oracle.json",
        ):
            if (out / name).is_file():
                (out / name).unlink()
    (out / "videos").mkdir(parents=True, exist_ok=True)


def _write_one(
    i: int,
    *,
    out: Path,
    seed: int,
    frames: int,
    size: tuple[int, int],
    fps: float,
    noise: float,
    held: Collection[tuple[str, str, str]],
) -> tuple[str, dict[str, str], dict[str, Any]] | None:
    """Render and write clip i of a dataset; None when it holds a held-out combination."""
    from tubelet.io import write_video

    clip = make_clip((seed, i), frames=frames, size=size, fps=fps, noise=noise)
    if held and any((o.color, o.shape, o.motion) in held for o in clip.scene.spec.objects):
        return None
    rel = f"videos/{i:06d}.mp4"
    write_video(out / rel, clip.frames, fps, sidecar=False)
    return rel, dict(clip.captions), clip.scene.to_dict()


def write_dataset(
    out: Path,
    num: int,
    *,
    seed: int = 0,
    frames: int = 17,
    size: int | tuple[int, int] = 64,
    fps: float = 8.0,
    noise: float = 0.0,
    progress: bool = True,
    holdout: Collection[tuple[str, str, str]] | None = None,
    workers: int = 1,
) -> Path:
    """Write `num` clips to `out`: videos/NNNNNN.mp4, captions.jsonl (an English and a Chinese line
    per clip), scenes.jsonl (the full scene per clip) and shapes.json (the generator settings).

    Clip i is `make_clip((seed, i), ...)`. Refuses (DataError) to write into a non-empty directory
    that is not a previous shapes dataset; a previous one is regenerated in place.
    `holdout`: (color, shape, motion) combinations kept out of the data: a clip with an object of
    such a combination (any size) is skipped, so the remaining clips keep their names and seeds.
    `workers` > 1 renders and encodes clips in that many processes (the output is identical).
    """
    from tqdm import tqdm

    if num < 1:
        raise DataError(f"number of clips must be >= 1, got {num}")
    if not fps > 0:
        raise DataError(f"fps must be > 0, got {fps}")
    if frames < 1:
        raise DataError(f"frames must be >= 1, got {frames}")
    if not noise >= 0:
        raise DataError(f"noise must be >= 0, got {noise}")
    try:
        h, w = _frame_size(size)
    except (TypeError, ValueError) as e:
        raise DataError(f"bad frame size {size!r}: {e}") from None
    held = {tuple(c) for c in (holdout or ())}
    for c in held:
        if len(c) != 3 or c[0] not in COLORS or c[1] not in SHAPES or c[2] not in MOTIONS:
            raise DataError(
                f"holdout entry {list(c)} is not [color, shape, motion] from {COLORS.keys()}, {SHAPES}, {MOTIONS}"
            )
    out = Path(out)
    _prepare_out(out)
    meta: dict[str, Any] = {
        "generator": "tubelet.data.shapes",
        "version": 1,
        "complete": False,
        "num": num,
        "seed": seed,
        "frames": frames,
        "size": [h, w],
        "fps": fps,
        "noise": noise,
        "holdout": sorted([list(c) for c in held]),
    }
    # the marker goes first so that an interrupted write can be regenerated in place
    (out / MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    t0 = time.perf_counter()
    skipped = 0
    captions_tmp = out / "captions.jsonl.tmp"
    scenes_tmp = out / "scenes.jsonl.tmp"
    job = functools.partial(
        _write_one, out=out, seed=seed, frames=frames, size=(h, w), fps=fps, noise=noise, held=held
    )
    workers = max(1, min(workers, num))
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(job, range(num), chunksize=16) if pool is not None else map(job, range(num))
        with captions_tmp.open("w", encoding="utf-8") as fc, scenes_tmp.open("w", encoding="utf-8") as fs:
            for i, res in enumerate(
                tqdm(results, total=num, desc="shapes", unit="clip", disable=not progress)
            ):
                if res is None:
                    skipped += 1
                    continue
                rel, captions, scene = res
                for lang in ("en", "zh"):
                    line = {"video": rel, "caption": captions[lang], "lang": lang}
                    fc.write(json.dumps(line, ensure_ascii=False) + "\n")
                fs.write(json.dumps({"video": rel, "seed": [seed, i], "scene": scene}) + "\n")
    finally:
        if pool is not None:
            pool.terminate()
    captions_tmp.replace(out / "captions.jsonl")
    scenes_tmp.replace(out / "scenes.jsonl")
    meta.update(complete=True, skipped_holdout=skipped, seconds=round(time.perf_counter() - t0, 3))
    (out / MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out

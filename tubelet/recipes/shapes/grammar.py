"""The shapes world's language: vocabulary, prompt specs, canonical captions, parsing, paraphrases.

A prompt names 1 to 3 objects (colour, shape, optional size, motion) and optionally a background, in
English or Chinese. `caption` writes the canonical wording of a `PromptSpec`, `paraphrase` a random
other wording, and `parse_caption` reads both languages and every wording back into the same spec.
The grammar is documented in docs/shapes-world.md.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tubelet.errors import CaptionError

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "MAX_OBJECTS",
    "MOTIONS",
    "SHAPES",
    "SIZES",
    "ObjectSpec",
    "PromptSpec",
    "caption",
    "detect_language",
    "paraphrase",
    "parse_caption",
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

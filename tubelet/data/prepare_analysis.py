"""Per-source analysis for `tubelet data prepare`: one decode of a source at a small size gives its
scene cuts and, for every candidate clip, the scores the filters read.

A source is decoded once, in chunks (memory stays bounded for hour-long files), on the frame grid of
the target rate (`read_video(fps=...)`: frame i is the one on screen at i / fps), at
`ANALYSIS_LONG_SIDE` pixels on the long side. For each frame it keeps a few numbers only:

- the scene detector's state (PySceneDetect's `ContentDetector` or `AdaptiveDetector`, fed our frames);
- the mean luma of every row and column (black borders are rows/columns that stay dark);
- a 64-bit perceptual hash (DCT pHash) of the frame without its dark border;
- every `flow_step` frames, the dense optical-flow speed (OpenCV Farneback) between this frame and the
  one `flow_step` frames earlier, averaged over the pixels that are not black;
- every quarter second, a small JPEG thumbnail for the report (a few KB each).

Scenes are then cut into candidate clips (`cut_scene`) and each candidate is scored from those numbers
(`score_candidate`). With the optional on-screen text filter (`--ocr`), the candidates that passed
the other per-clip filters get one more score, `text` (`text_score`): three frames are decoded again
at `OCR_LONG_SIDE` and read by RapidOCR (the `ocr` extra). Nothing here writes files;
`tubelet.data.prepare` drives it.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.errors import TubeletError

__all__ = [
    "ANALYSIS_LONG_SIDE",
    "Candidate",
    "SourceAnalysis",
    "analyze_source",
    "border_box",
    "cut_scene",
    "hamming",
    "phash",
]

ANALYSIS_LONG_SIDE = 160  # pixels: analysis frames (cuts, motion, borders, hashes) are this small
THUMB_LONG_SIDE = 128  # pixels: report thumbnails
THUMB_EVERY_SECONDS = 0.25
FLOW_STEP_SECONDS = 0.125  # optical flow between frames this far apart (>= 1 frame)
CHUNK_FRAMES = 512  # analysis frames decoded per read (bounded memory)
OCR_LONG_SIDE = 640  # pixels: frames read by the text filter (subtitles stay legible)
OCR_MIN_SCORE = 0.5  # recognition confidence below which a detected box is not counted as text


@dataclass
class Candidate:
    """One clip cut from a scene, with its scores and (after filtering) why it was dropped.

    Frames are on the source's analysis grid: frame i is on screen at i / fps seconds.
    `box` is the content box (x0, y0, x1, y1) in analysis pixels; `content_width/height` the content
    size in source pixels (estimated from the box). `reason` is None for a clip that passes.
    """

    source: str
    scene: int
    start_frame: int
    end_frame: int  # exclusive
    fps: float
    motion: float = 0.0  # mean flow speed over non-black pixels, % of the content width per second
    border: float = 0.0  # fraction of the frame area outside the content box
    box: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    content_width: int = 0
    content_height: int = 0
    phash: list[str] = field(default_factory=list)  # 16-hex-digit hashes at 1/4, 1/2, 3/4 of the clip
    text: float | None = None  # with --ocr: the largest fraction of a frame covered by legible text
    thumb: str = ""  # base64 JPEG strip (first, middle, last frame) for the report
    reason: str | None = None
    duplicate_of: str | None = None

    @property
    def frames(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    @property
    def start(self) -> float:
        return self.start_frame / self.fps

    @property
    def end(self) -> float:
        return self.end_frame / self.fps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        return cls(**d)


@dataclass
class SourceAnalysis:
    """What one source gave: its facts, scenes and candidates, or the `error` that made it unusable."""

    path: str
    error: str | None = None
    width: int = 0
    height: int = 0
    fps: float = 0.0  # the rate the source was analysed (and its clips are written) at
    frames: int = 0
    scenes: list[list[int]] = field(default_factory=list)  # [start, end) frames
    candidates: list[Candidate] = field(default_factory=list)
    cpu_seconds: float = 0.0

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceAnalysis:
        d = dict(d)
        d["candidates"] = [Candidate.from_dict(c) for c in d.get("candidates", [])]
        return cls(**d)


# ---------------------------------------------------------------------------------------------------
# Small pure functions (tested on their own)


def border_box(row_luma: np.ndarray, col_luma: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """Content box (x0, y0, x1, y1) from the mean luma of each row (H,) and column (W,).

    Border rows/columns are those, counted from each edge, whose mean luma is at most `threshold`
    (0..255): the black bars of letterboxing (top/bottom) and pillarboxing (left/right). A frame with
    no row above the threshold gives an empty box (0, 0, 0, 0).
    """
    rows = np.flatnonzero(row_luma > threshold)
    cols = np.flatnonzero(col_luma > threshold)
    if rows.size == 0 or cols.size == 0:
        return 0, 0, 0, 0
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def phash(gray: np.ndarray) -> int:
    """64-bit perceptual hash of a grey image (H, W) uint8: the signs of its 8x8 lowest DCT
    frequencies (of a 32x32 area-downscaled copy) against their median, DC excluded from the median.

    Resizing, re-encoding and small colour shifts move few bits; different pictures differ in ~32.
    """
    import cv2

    if gray.size == 0:
        return 0
    small = cv2.resize(np.ascontiguousarray(gray), (32, 32), interpolation=cv2.INTER_AREA)
    coeffs = cv2.dct(small.astype(np.float32))[:8, :8].reshape(-1)
    bits = coeffs > np.median(coeffs[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between uint64 hash arrays (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b))


def cut_scene(
    start: int, end: int, fps: float, *, min_seconds: float, max_seconds: float, clip_frames: int
) -> list[tuple[int, int, bool]]:
    """Split the scene [start, end) into clips: (start, end, long_enough).

    With `clip_frames` > 0: consecutive clips of exactly that many frames (the remainder is left
    out); a scene shorter than one clip (or than `min_seconds`) gives one clip marked too short.
    Without: the scene is split into the fewest equal pieces no longer than `max_seconds`; a piece
    shorter than `min_seconds` is marked too short.
    """
    n = end - start
    min_frames = max(1, int(np.ceil(min_seconds * fps - 1e-9)))
    if clip_frames > 0:
        if n < max(clip_frames, min_frames):
            return [(start, end, False)]
        return [
            (start + i * clip_frames, start + (i + 1) * clip_frames, True) for i in range(n // clip_frames)
        ]
    max_frames = max(1, int(np.floor(max_seconds * fps + 1e-9)))
    pieces = max(1, -(-n // max_frames))
    bounds = [start + round(i * n / pieces) for i in range(pieces + 1)]
    return [(a, b, b - a >= min_frames) for a, b in itertools.pairwise(bounds)]


# ---------------------------------------------------------------------------------------------------
# The streaming pass


def _make_detector(opts: Any, fps: float) -> Any:
    from scenedetect import AdaptiveDetector, ContentDetector

    min_len = max(1, round(opts.min_scene_seconds * fps))
    if opts.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=opts.adaptive_threshold, min_scene_len=min_len)
    return ContentDetector(threshold=opts.threshold, min_scene_len=min_len)


def _analysis_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    s = long_side / max(width, height)
    if s >= 1:
        return height, width
    return max(16, round(height * s)), max(16, round(width * s))


class _Features:
    """Per-frame numbers of one source, filled frame by frame."""

    def __init__(self, opts: Any, fps: float, hw: tuple[int, int]) -> None:
        import cv2

        self.cv2 = cv2
        self.opts, self.fps, self.hw = opts, fps, hw
        self.detector = _make_detector(opts, fps)
        self.cuts: list[int] = []
        self.row_luma: list[np.ndarray] = []
        self.col_luma: list[np.ndarray] = []
        self.hashes: list[int] = []
        self.flow_step = max(1, round(FLOW_STEP_SECONDS * fps))
        self.flow: dict[int, float] = {}  # frame j -> speed between frames j - flow_step and j
        self.recent: list[np.ndarray] = []  # the last flow_step grey frames
        self.thumb_every = max(1, round(THUMB_EVERY_SECONDS * fps))
        self.thumbs: dict[int, bytes] = {}  # frame -> JPEG (kept encoded: hours of footage fit)
        self.n = 0

    def push(self, rgb: np.ndarray) -> None:
        from scenedetect import FrameTimecode

        cv2, opts, i = self.cv2, self.opts, self.n
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        self.cuts += [int(c.frame_num) for c in self.detector.process_frame(FrameTimecode(i, self.fps), bgr)]
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        rows, cols = gray.mean(axis=1), gray.mean(axis=0)
        self.row_luma.append(rows.astype(np.float32))
        self.col_luma.append(cols.astype(np.float32))
        x0, y0, x1, y1 = border_box(rows, cols, opts.border_luma)
        self.hashes.append(phash(gray[y0:y1, x0:x1]))
        if i % self.flow_step == 0 and len(self.recent) == self.flow_step:
            prev = self.recent[0]
            flow = cv2.calcOpticalFlowFarneback(prev, gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            speed = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
            lit = (prev > opts.border_luma) | (gray > opts.border_luma)  # black bars do not count
            width = max(1, x1 - x0)
            mean = float(speed[lit].mean()) if lit.any() else 0.0
            self.flow[i] = 100.0 * mean / width * self.fps / self.flow_step
        self.recent.append(gray)
        if len(self.recent) > self.flow_step:
            self.recent.pop(0)
        if i % self.thumb_every == 0:
            h, w = rgb.shape[:2]
            s = THUMB_LONG_SIDE / max(h, w)
            size = (max(1, round(w * s)), max(1, round(h * s)))
            small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if s < 1 else rgb
            ok, buf = cv2.imencode(
                ".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85]
            )
            if ok:
                self.thumbs[i] = buf.tobytes()
        self.n += 1

    def finish(self) -> list[int]:
        from scenedetect import FrameTimecode

        self.cuts += [int(c.frame_num) for c in self.detector.post_process(FrameTimecode(self.n, self.fps))]
        return sorted({c for c in self.cuts if 0 < c < self.n})

    def thumb_near(self, i: int, lo: int, hi: int) -> np.ndarray:
        """The stored thumbnail nearest frame i, preferring those inside [lo, hi) (the clip)."""
        inside = [j for j in self.thumbs if lo <= j < hi] or list(self.thumbs)
        k = min(inside, key=lambda j: (abs(j - i), j))
        img = self.cv2.imdecode(np.frombuffer(self.thumbs[k], np.uint8), self.cv2.IMREAD_COLOR)
        assert img is not None  # we encoded it
        return np.asarray(self.cv2.cvtColor(img, self.cv2.COLOR_BGR2RGB))


def _strip(feats: _Features, start: int, end: int) -> str:
    import cv2

    if not feats.thumbs:
        return ""
    tiles = [feats.thumb_near(i, start, end) for i in (start, (start + end - 1) // 2, end - 1)]
    h = min(t.shape[0] for t in tiles)
    gap = np.full((h, 2, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for t in tiles:
        parts += [t[:h], gap]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.concatenate(parts[:-1], axis=1), cv2.COLOR_RGB2BGR))
    return base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


def score_candidate(
    cand: Candidate, feats: _Features, source_hw: tuple[int, int], row: np.ndarray, col: np.ndarray
) -> None:
    """Fill `cand`'s scores from the per-frame numbers (`row`, `col`: the (F, H) / (F, W) lumas)."""
    opts = feats.opts
    s, e = cand.start_frame, cand.end_frame
    ah, aw = feats.hw
    x0, y0, x1, y1 = border_box(row[s:e].max(axis=0), col[s:e].max(axis=0), opts.border_luma)
    cand.box = [x0, y0, x1, y1]
    cand.border = 1.0 - (x1 - x0) * (y1 - y0) / (aw * ah)
    sh, sw = source_hw
    cand.content_width = round((x1 - x0) * sw / aw)
    cand.content_height = round((y1 - y0) * sh / ah)
    speeds = [v for j, v in feats.flow.items() if s + feats.flow_step <= j < e]
    cand.motion = float(np.mean(speeds)) if speeds else 0.0
    cand.phash = [f"{feats.hashes[s + int((e - s) * q)]:016x}" for q in (0.25, 0.5, 0.75)]
    cand.thumb = _strip(feats, s, e)


def first_reason(cand: Candidate, opts: Any, long_enough: bool) -> str | None:
    """The first per-clip filter `cand` fails, in the fixed order of `tubelet.data.prepare.REASONS`."""
    if not long_enough:
        return "too_short"
    if cand.border > opts.max_border:
        return "borders"
    if min(cand.content_width, cand.content_height) < opts.min_size:
        return "too_small"
    if cand.motion < opts.min_motion:
        return "static"
    if cand.motion > opts.max_motion:
        return "extreme_motion"
    if cand.text is not None and cand.text > opts.max_text:
        return "text"
    return None


_OCR: Any = None  # one RapidOCR engine per process, made on first use


def ocr_engine() -> Any:
    """This process's RapidOCR engine (onnxruntime, the models inside the wheel, quiet, 1 thread);
    a DataError naming the extra when it is not installed."""
    global _OCR
    if _OCR is None:
        import logging

        try:
            from rapidocr import RapidOCR
        except ImportError:
            from tubelet.errors import DataError

            raise DataError(
                "--ocr needs the OCR extra: pip install 'tubelet[ocr]' (rapidocr and onnxruntime; "
                "the text models ship inside the rapidocr wheel, nothing is downloaded)"
            ) from None
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        _OCR = RapidOCR(params={"EngineConfig.onnxruntime.intra_op_num_threads": 1})
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    return _OCR


def text_area(rgb: np.ndarray) -> float:
    """Fraction of the frame's area inside boxes of text RapidOCR reads with confidence >=
    `OCR_MIN_SCORE` (two characters or more). Detection alone finds texture as text now and then
    (whole-frame boxes on plain street scenes); requiring a confident reading removes those."""
    import cv2

    result = ocr_engine()(rgb, use_cls=False)
    if result.boxes is None or result.txts is None:
        return 0.0
    area = 0.0
    for box, txt, score in zip(result.boxes, result.txts, result.scores):
        if score >= OCR_MIN_SCORE and len(str(txt).strip()) >= 2:
            area += float(cv2.contourArea(np.asarray(box, np.float32)))
    return min(1.0, area / (rgb.shape[0] * rgb.shape[1]))


def text_score(path: str | Path, cand: Candidate, source_hw: tuple[int, int]) -> float:
    """`text` of a candidate: the largest `text_area` of its frames at 1/4, 1/2 and 3/4."""
    from tubelet.media import read_video

    h, w = _analysis_size(source_hw[1], source_hw[0], OCR_LONG_SIDE)
    best = 0.0
    s, e = cand.start_frame, cand.end_frame
    for q in (0.25, 0.5, 0.75):
        i = s + int((e - s) * q)
        frames = read_video(path, fps=cand.fps, size=(h, w), start=i / cand.fps, max_frames=1).frames
        if len(frames):
            best = max(best, text_area(np.ascontiguousarray(frames[0])))
    return round(best, 4)


def analyze_source(path: str | Path, opts: Any) -> SourceAnalysis:
    """Decode `path` once at the analysis size and return its scenes and scored candidates.

    `opts` is a `tubelet.data.prepare.PrepareOptions`. A source that cannot be read (missing,
    not a video, truncated, damaged) gives a `SourceAnalysis` with `error` set, never an exception.
    """
    import cv2

    from tubelet.media import probe_video, read_video

    cv2.setNumThreads(1)
    t0 = time.process_time()
    out = SourceAnalysis(str(path))
    try:
        info = probe_video(path)
        fps = float(opts.fps or info.fps)
        ah, aw = _analysis_size(info.width, info.height, ANALYSIS_LONG_SIDE)
        feats = _Features(opts, fps, (ah, aw))
        start = 0
        while True:  # read one frame more than the chunk: it tells whether the source goes on
            chunk = read_video(path, fps=fps, size=(ah, aw), start=start / fps, max_frames=CHUNK_FRAMES + 1)
            frames = chunk.frames
            for f in frames[:CHUNK_FRAMES]:
                feats.push(f)
            if len(frames) <= CHUNK_FRAMES:
                break
            start += CHUNK_FRAMES
        cuts = feats.finish()
    except TubeletError as e:
        out.error = getattr(e, "cause", None) or str(e)
        out.cpu_seconds = time.process_time() - t0
        return out
    except Exception as e:  # a decoder bug must not stop the other sources
        out.error = f"{type(e).__name__}: {e}"
        out.cpu_seconds = time.process_time() - t0
        return out
    out.width, out.height, out.fps, out.frames = info.width, info.height, fps, feats.n
    bounds = [0, *cuts, feats.n]
    out.scenes = [[a, b] for a, b in itertools.pairwise(bounds) if b > a]
    row, col = np.stack(feats.row_luma), np.stack(feats.col_luma)
    for k, (a, b) in enumerate(out.scenes):
        for c0, c1, long_enough in cut_scene(
            a,
            b,
            fps,
            min_seconds=opts.min_seconds,
            max_seconds=opts.max_seconds,
            clip_frames=opts.clip_frames,
        ):
            cand = Candidate(str(path), k, c0, c1, fps)
            score_candidate(cand, feats, (info.height, info.width), row, col)
            cand.reason = first_reason(cand, opts, long_enough)
            if opts.ocr and cand.reason is None:  # the dear score only for clips still in
                cand.text = text_score(path, cand, (info.height, info.width))
                cand.reason = first_reason(cand, opts, long_enough)
            out.candidates.append(cand)
    out.cpu_seconds = time.process_time() - t0
    return out

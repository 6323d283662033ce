"""Score a folder of videos on VBench-style dimensions; write ``report.json`` and ``report.html``.

Captions come from ``captions.jsonl`` in the folder (lines ``{"video": relpath, "caption": text}``)
or, for files it does not name, from VBench's file naming ``{prompt}-{index}.mp4``.

The HTML report is one self-contained file: inline SVG bar charts, tables, and base64 PNG
thumbnails (no scripts, no CDN). Every stand-in dimension is labelled as such in both reports.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tubelet.core.files import atomic_write_text
from tubelet.errors import ConfigError, DataError, ModelLoadError, VideoError
from tubelet.eval.dimensions import (
    Clip,
    ClipScore,
    Dimension,
    make_dimension,
    parse_dimension_list,
    summarise,
)
from tubelet.eval.vbench import vbench_scores

__all__ = [
    "CAPTIONS_FILE",
    "EvalRun",
    "VideoEntry",
    "collect_videos",
    "evaluate_folder",
    "format_table",
    "prompt_from_filename",
    "render_html",
    "write_report",
]

CAPTIONS_FILE = "captions.jsonl"
STAND_IN_NOTE = (
    "Dimensions marked 'stand-in' replace VBench's network with a classical method (OpenCV optical flow "
    "instead of RAFT, flow-based interpolation instead of AMT, CLIP instead of ViCLIP): their numbers are "
    "not official VBench numbers."
)


@dataclass(frozen=True)
class VideoEntry:
    """A video to score: its name in the report (path relative to the folder), file and prompt."""

    name: str
    path: Path
    prompt: str


@dataclass
class EvalRun:
    """The result of `evaluate_folder`: the JSON-able report and per-clip thumbnails (PNG bytes)."""

    report: dict[str, Any]
    thumbnails: dict[str, list[bytes]] = field(default_factory=dict)


_INDEX_SUFFIX = re.compile(r"-\d+$")


def prompt_from_filename(path: str | Path) -> str:
    """VBench naming: ``"{prompt}-{index}.mp4"`` -> ``prompt`` (the whole stem when there is no index)."""
    stem = Path(path).stem
    return _INDEX_SUFFIX.sub("", stem) or stem


def _read_captions(folder: Path) -> dict[str, str]:
    """Relative path -> caption from the folder's captions file, if any (first caption of a file wins)."""
    from tubelet.data.dataset import CAPTION_FILES, read_captions

    if not any((folder / name).is_file() for name in CAPTION_FILES):
        return {}
    out: dict[str, str] = {}
    for entry in read_captions(folder).entries:
        out.setdefault(Path(entry.video).as_posix(), entry.caption)
    return out


def collect_videos(folder: str | Path) -> list[VideoEntry]:
    """The videos of `folder` (recursive, sorted) with their prompts.

    Files named in ``captions.jsonl`` (even missing ones: they are then reported as unreadable)
    plus every other video file, whose prompt comes from its name.

    Raises:
        DataError: the folder does not exist, its captions file is malformed, or it holds no video.
    """
    from tubelet.media import VIDEO_EXTENSIONS, is_video_path

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a folder of videos)")
    captions = _read_captions(root)
    entries: dict[str, VideoEntry] = {}
    for rel, caption in captions.items():
        p = Path(rel)
        path = p if p.is_absolute() else root / p
        entries[rel] = VideoEntry(rel, path, caption)
    for path in sorted(root.rglob("*")):
        if path.is_file() and is_video_path(path):
            rel = path.relative_to(root).as_posix()
            if rel not in entries:
                entries[rel] = VideoEntry(rel, path, prompt_from_filename(path))
    if not entries:
        raise DataError(
            f"{root}: no videos found (looked for {', '.join(sorted(VIDEO_EXTENSIONS))} files and {CAPTIONS_FILE})"
        )
    return [entries[k] for k in sorted(entries)]


def _thumbnails(frames: np.ndarray, count: int, height: int = 64) -> list[bytes]:
    """`count` evenly spaced frames as PNG bytes, scaled to `height` pixels high."""
    if count <= 0:
        return []
    t, h, w = frames.shape[:3]
    idx = sorted({round(i * (t - 1) / max(1, count - 1)) for i in range(count)})
    out = []
    for i in idx:
        new_w = max(1, round(w * height / h))
        small = cv2.resize(
            frames[i], (new_w, height), interpolation=cv2.INTER_AREA if h > height else cv2.INTER_NEAREST
        )
        ok, buf = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        if ok:
            out.append(buf.tobytes())
    return out


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def _build_dimensions(
    names: Sequence[str], weights: str | Path | None, device: str
) -> tuple[list[Dimension], dict[str, str]]:
    dims, skipped = [], {}
    for name in names:
        try:
            dims.append(make_dimension(name, weights=weights, device=device))
        except ModelLoadError as e:  # includes WeightsMissingError
            skipped[name] = str(e)
    return dims, skipped


def evaluate_folder(
    folder: str | Path,
    dims: str | Sequence[str] | None = None,
    *,
    weights: str | Path | None = None,
    device: str | None = None,
    max_frames: int | None = None,
    thumbnails: int = 4,
    progress: bool = True,
    on_skip: Callable[[str, str], None] | None = None,
) -> EvalRun:
    """Score every video of `folder` on the chosen dimensions.

    Args:
        folder: a folder of videos (see `collect_videos`).
        dims: dimension names (a list or ``"a,b"``); None: all of them. Model-backed dimensions
            whose weights are not under `weights` are skipped with the reason.
        weights: local weights directory for the model-backed dimensions (nothing is downloaded).
        device: torch device for model-backed dimensions (default: cuda if available).
        max_frames: read at most this many frames per video (None: all, as VBench).
        thumbnails: frames per clip kept as thumbnails for the HTML report.
        progress: show a tqdm progress bar.
        on_skip: called with (dimension, reason) when a dimension is skipped.

    Returns:
        An `EvalRun` whose ``report`` is ``{"dimensions": {name: {"score", "stand_in", "method",
        "per_clip", "excluded"}}, "vbench": {...}, "skipped": {name: reason}, "errors": {video:
        reason}, "clips": {video: {...}}, ...}``.

    Raises:
        ConfigError: unknown dimension name, or none of the requested dimensions can run.
        DataError: no videos in the folder, a malformed captions file, or no video readable.
    """
    from tqdm import tqdm

    from tubelet.media import read_video

    names = (
        parse_dimension_list(dims)
        if dims is None or isinstance(dims, str)
        else parse_dimension_list(",".join(dims))
    )
    entries = collect_videos(folder)
    device = device or _default_device()
    active, skipped = _build_dimensions(names, weights, device)
    for name, reason in skipped.items():
        if on_skip:
            on_skip(name, reason)
    if not active:
        raise ConfigError(
            "no requested dimension can run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )

    scores: dict[str, dict[str, ClipScore]] = {d.name: {} for d in active}
    clips_info: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    thumbs: dict[str, list[bytes]] = {}
    bar = tqdm(entries, desc="evaluating", unit="clip", disable=not progress, dynamic_ncols=True)
    for entry in bar:
        try:
            video = read_video(entry.path, max_frames=max_frames)
            clip = Clip(video.frames, fps=video.fps, name=entry.name)
        except VideoError as e:
            errors[entry.name] = e.cause if getattr(e, "path", None) == str(entry.path) else str(e)
            continue
        except ValueError as e:  # frames that are not a usable clip (e.g. zero-sized)
            errors[entry.name] = str(e)
            continue
        clips_info[entry.name] = {
            "caption": entry.prompt,
            "frames": clip.num_frames,
            "fps": clip.fps,
            "size": list(clip.size),
        }
        thumbs[entry.name] = _thumbnails(clip.frames, thumbnails)
        for dim in list(active):
            try:
                scores[dim.name][entry.name] = dim.score(clip, entry.prompt)
            except ModelLoadError as e:  # weights present but unusable: drop the dimension, keep going
                skipped[dim.name] = str(e)
                active.remove(dim)
                scores.pop(dim.name, None)
                if on_skip:
                    on_skip(dim.name, str(e))
        del clip, video
    bar.close()
    if not clips_info:
        first = "; ".join(f"{k}: {v}" for k, v in list(errors.items())[:3])
        raise DataError(f"{folder}: none of the {len(entries)} videos could be read ({first})")

    results = {d.name: summarise(d, scores[d.name]) for d in active if d.name in scores}
    dimensions = {name: res.to_dict() for name, res in results.items()}
    vb = vbench_scores(
        {d.name: results[d.name].score for d in active if d.vbench},
        stand_ins=[n for n, r in results.items() if r.stand_in],
    )
    report = {
        "folder": str(folder),
        "note": STAND_IN_NOTE,
        "dimensions": dimensions,
        "vbench": vb,
        "skipped": skipped,
        "errors": errors,
        "clips": clips_info,
    }
    return EvalRun(report=report, thumbnails=thumbs)


# --------------------------------------------------------------------------------------------
# Text table
# --------------------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_table(report: dict[str, Any]) -> str:
    """A plain-text summary: one row per dimension, then the VBench scores."""
    rows = [("dimension", "score", "clips", "excluded", "method")]
    for name, d in report["dimensions"].items():
        n = len(d["per_clip"])
        label = name + (" (stand-in)" if d["stand_in"] else "")
        short = d["method"] if len(d["method"]) <= 60 else d["method"][:57] + "..."
        rows.append((label, _fmt(d["score"]), str(n), str(len(d.get("excluded", {}))), short))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * min(120, sum(widths) + 8 + 40))
    for name, reason in report.get("skipped", {}).items():
        lines.append(f"skipped {name}: {reason}")
    if report.get("errors"):
        lines.append(f"unreadable videos: {len(report['errors'])} (listed in report.json)")
    vb = report.get("vbench", {})
    if vb.get("total") is not None:
        lines.append(
            f"VBench: quality {100 * vb['quality']:.2f}%  semantic {100 * vb['semantic']:.2f}%  total {100 * vb['total']:.2f}%"
        )
    for group, info in vb.get("partial", {}).items():
        lines.append(
            f"VBench {group} (partial, covers {', '.join(info['covers'])}): {100 * info['score']:.2f}%"
        )
    if vb.get("note"):
        lines.append(f"note: {vb['note']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_OFFICIAL = "#3b73c4"
_STAND_IN = "#e08a2c"
_MISSING = "#bbbbbb"
_e = html.escape


def _svg_dimension_bars(dims: dict[str, dict[str, Any]]) -> str:
    """One horizontal bar per dimension, score in [0, 1]."""
    label_w, bar_w, row_h = 250, 360, 24
    height = row_h * len(dims) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 70}" height="{height}" '
        f'role="img" aria-label="dimension scores">'
    ]
    for k in range(5):
        x = label_w + bar_w * k / 4
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 20}" stroke="#ddd"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">{k / 4:.2f}</text>'
        )
    for i, (name, d) in enumerate(dims.items()):
        y = i * row_h + 4
        v = d["score"]
        color = _STAND_IN if d["stand_in"] else _OFFICIAL
        label = name + (" (stand-in)" if d["stand_in"] else "")
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 14}" font-size="12" text-anchor="end">{_e(label)}</text>'
        )
        if v is None:
            parts.append(f'<text x="{label_w + 4}" y="{y + 14}" font-size="12" fill="#888">no score</text>')
            continue
        w = bar_w * min(max(v, 0.0), 1.0)
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{row_h - 8}" fill="{color}">'
            f"<title>{_e(name)}: {v:.4f}</title></rect>"
        )
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 13}" font-size="11">{v:.4f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_clip_columns(name: str, per_clip: dict[str, float | None], stand_in: bool) -> str:
    """One vertical bar per clip for one dimension."""
    n = max(1, len(per_clip))
    col = max(3.0, min(24.0, 720.0 / n))
    plot_h, left = 80, 34
    width = left + col * n + 10
    color = _STAND_IN if stand_in else _OFFICIAL
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{plot_h + 16}" role="img" '
        f'aria-label="{_e(name)} per clip">',
        f'<text x="{left - 4}" y="10" font-size="9" text-anchor="end">1</text>',
        f'<text x="{left - 4}" y="{plot_h}" font-size="9" text-anchor="end">0</text>',
        f'<line x1="{left}" y1="{plot_h}" x2="{width - 6:.0f}" y2="{plot_h}" stroke="#999"/>',
    ]
    for i, (clip, v) in enumerate(per_clip.items()):
        x = left + i * col
        if v is None:
            parts.append(
                f'<rect x="{x + 0.5:.1f}" y="{plot_h - 3}" width="{max(1.0, col - 1):.1f}" height="3" fill="{_MISSING}">'
                f"<title>{_e(clip)}: excluded</title></rect>"
            )
            continue
        h = plot_h * min(max(v, 0.0), 1.0)
        parts.append(
            f'<rect x="{x + 0.5:.1f}" y="{plot_h - h:.1f}" width="{max(1.0, col - 1):.1f}" height="{h:.1f}" '
            f'fill="{color}"><title>{_e(clip)}: {v:.4f}</title></rect>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _vbench_html(vb: dict[str, Any]) -> str:
    rows = []
    for key in ("quality", "semantic", "total"):
        if vb.get(key) is not None:
            rows.append(f"<tr><td>{key}</td><td>{100 * vb[key]:.2f}%</td><td>complete</td></tr>")
    for group, info in vb.get("partial", {}).items():
        rows.append(
            f"<tr><td>{_e(group)} (partial)</td><td>{100 * info['score']:.2f}%</td>"
            f"<td>covers {_e(', '.join(info['covers']))}</td></tr>"
        )
    if not rows:
        rows.append('<tr><td colspan="3">no VBench dimension scored</td></tr>')
    return (
        "<table><tr><th>VBench score</th><th>value</th><th>coverage</th></tr>"
        + "".join(rows)
        + f"</table><p class=note>{_e(vb.get('note', ''))}</p>"
    )


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:left;vertical-align:middle}
th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#8a4b00;font-size:13px}
.si{color:#b05f00;font-size:11px}
.strip img{height:48px;margin-right:2px;image-rendering:pixelated;border:1px solid #ccc}
h2{margin-top:28px}
"""


def render_html(run: EvalRun, title: str = "tubelet evaluation report") -> str:
    """The report as one self-contained HTML page (inline SVG + base64 PNG, no external resources)."""
    rep = run.report
    dims: dict[str, dict[str, Any]] = rep["dimensions"]
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>Folder: <code>{_e(str(rep.get('folder', '')))}</code> &middot; {len(rep.get('clips', {}))} clips scored"
        f" &middot; {len(rep.get('errors', {}))} unreadable</p>",
        f"<p class=note>{_e(STAND_IN_NOTE)}</p>",
        "<h2>Dimensions</h2>",
        _svg_dimension_bars(dims) if dims else "<p>no dimension scored</p>",
        f"<p><span style='color:{_OFFICIAL}'>&#9632;</span> VBench method &nbsp; "
        f"<span style='color:{_STAND_IN}'>&#9632;</span> stand-in method</p>",
        "<table><tr><th>dimension</th><th>score</th><th>stand-in</th><th>method</th><th>excluded clips</th></tr>",
    ]
    for name, d in dims.items():
        out.append(
            f"<tr><td>{_e(name)}</td><td class=num>{_fmt(d['score'])}</td><td>{'yes' if d['stand_in'] else 'no'}</td>"
            f"<td>{_e(d['method'])}</td><td class=num>{len(d.get('excluded', {}))}</td></tr>"
        )
    out.append("</table>")
    out.append("<h2>VBench normalisation</h2>")
    out.append(_vbench_html(rep.get("vbench", {})))
    if rep.get("skipped"):
        out.append("<h2>Skipped dimensions</h2><table><tr><th>dimension</th><th>reason</th></tr>")
        out.extend(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rep["skipped"].items())
        out.append("</table>")
    out.append("<h2>Per clip, by dimension</h2>")
    for name, d in dims.items():
        tag = " <span class=si>(stand-in)</span>" if d["stand_in"] else ""
        out.append(f"<h3>{_e(name)}{tag}</h3>")
        out.append(_svg_clip_columns(name, d["per_clip"], d["stand_in"]))
    out.append("<h2>Clips</h2><table><tr><th>video</th><th>caption</th><th>frames</th>")
    out.extend(
        f"<th>{_e(n)}{'<br><span class=si>stand-in</span>' if d['stand_in'] else ''}</th>"
        for n, d in dims.items()
    )
    out.append("</tr>")
    for clip, info in rep.get("clips", {}).items():
        strip = "".join(
            f"<img alt='{_e(clip)} frame' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"
            for png in run.thumbnails.get(clip, [])
        )
        cells = []
        for d in dims.values():
            v = d["per_clip"].get(clip)
            reason = d.get("excluded", {}).get(clip)
            cells.append(
                f"<td class=num title='{_e(reason)}'>excluded</td>"
                if reason
                else f"<td class=num>{_fmt(v)}</td>"
            )
        out.append(
            f"<tr><td>{_e(clip)}<div class=strip>{strip}</div></td><td>{_e(info.get('caption', ''))}</td>"
            f"<td class=num>{info.get('frames', '')}</td>{''.join(cells)}</tr>"
        )
    out.append("</table>")
    if rep.get("errors"):
        out.append("<h2>Unreadable videos</h2><table><tr><th>video</th><th>error</th></tr>")
        out.extend(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rep["errors"].items())
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run: EvalRun, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into `out_dir` (created); returns their paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        jp, hp = out / "report.json", out / "report.html"
        atomic_write_text(jp, json.dumps(run.report, indent=2, allow_nan=False) + "\n")
        atomic_write_text(hp, render_html(run))
    except OSError as e:
        raise DataError(f"{out}: cannot write the report ({e.strerror or e})") from None
    return jp, hp

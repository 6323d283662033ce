"""DATASET/prepare-report.html: one self-contained page (inline SVG histograms, inline JPEG
thumbnails, no scripts, no network) for checking `tubelet data prepare`'s thresholds by eye."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.data.prepare_analysis import Candidate

__all__ = ["render_report"]

MAX_KEPT_THUMBS = 200
MAX_DROPPED_THUMBS = 100  # per reason

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #e4e4e4;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:4px;width:396px}
figure.drop{border-color:#d99}figure img{display:block;max-width:100%}
figcaption{font-size:12px;color:#444;word-break:break-all}
.reason{color:#a22;font-weight:600}.hists{display:flex;flex-wrap:wrap;gap:18px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _histogram(
    title: str, kept: Sequence[float], dropped: Sequence[float], lines: Sequence[tuple[float, str]], log: bool
) -> str:
    """An SVG histogram of kept (green) over dropped (grey) values, with dashed threshold lines."""
    w, h, pad = 360, 170, 30
    values = [*kept, *dropped]
    if not values:
        return f"<div><b>{_e(title)}</b><p>no clips</p></div>"

    def tr(v: float) -> float:
        return math.log10(max(v, 1e-3)) if log else v

    lo = min([tr(v) for v in values] + [tr(t) for t, _ in lines])
    hi = max([tr(v) for v in values] + [tr(t) for t, _ in lines])
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    bins = 24
    edges = np.linspace(lo, hi, bins + 1)
    ck, _ = np.histogram([tr(v) for v in kept], edges)
    cd, _ = np.histogram([tr(v) for v in dropped], edges)
    top = max(1, int((ck + cd).max()))
    bw = (w - 2 * pad) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 30}" role="img">']
    parts.append(f'<text x="{pad}" y="14" font-size="13" font-weight="600">{_e(title)}</text>')
    base = h - 10
    for i in range(bins):
        x = pad + i * bw
        hk = (h - 40) * ck[i] / top
        hd = (h - 40) * cd[i] / top
        if cd[i]:
            parts.append(
                f'<rect x="{x:.1f}" y="{base - hd:.1f}" width="{bw - 1:.1f}" height="{hd:.1f}" fill="#bbb"/>'
            )
        if ck[i]:
            parts.append(
                f'<rect x="{x:.1f}" y="{base - hd - hk:.1f}" width="{bw - 1:.1f}" height="{hk:.1f}" fill="#3a8f4a"/>'
            )
    parts.append(f'<line x1="{pad}" y1="{base}" x2="{w - pad}" y2="{base}" stroke="#444"/>')
    for t, label in lines:
        x = pad + (tr(t) - lo) / (hi - lo) * (w - 2 * pad)
        parts.append(
            f'<line x1="{x:.1f}" y1="22" x2="{x:.1f}" y2="{base}" stroke="#c33" stroke-dasharray="4 3"/>'
        )
        parts.append(f'<text x="{x + 3:.1f}" y="32" font-size="11" fill="#c33">{_e(label)}</text>')

    def fmt(v: float) -> str:
        return f"{10**v:.3g}" if log else f"{v:.3g}"

    parts.append(f'<text x="{pad}" y="{base + 16}" font-size="11">{fmt(lo)}</text>')
    parts.append(f'<text x="{w - pad}" y="{base + 16}" font-size="11" text-anchor="end">{fmt(hi)}</text>')
    parts.append(
        f'<text x="{w / 2}" y="{base + 30}" font-size="11" text-anchor="middle">'
        f"max bin {top} clips{' (log scale)' if log else ''}; green kept, grey dropped</text>"
    )
    parts.append("</svg>")
    return "<div>" + "".join(parts) + "</div>"


def _figure(c: Candidate, line: dict[str, Any]) -> str:
    img = f'<img alt="" src="data:image/jpeg;base64,{c.thumb}">' if c.thumb else ""
    why = ""
    if c.reason:
        why = f'<span class="reason">{_e(c.reason)}</span>'
        if c.duplicate_of:
            why += f" of {_e(c.duplicate_of)}"
        why += "<br>"
    size = (
        f"{line['width']}x{line['height']}" if "width" in line else f"~{c.content_width}x{c.content_height}"
    )
    return (
        f'<figure class="{"drop" if c.reason else "keep"}">{img}<figcaption>{why}'
        f"{_e(Path(c.source).name)} {c.start:.2f}-{c.end:.2f}s ({c.frames} frames, {size})<br>"
        f"motion {c.motion:.2f} %/s · border {c.border:.3f} · {_e(line['video'])}</figcaption></figure>"
    )


def render_report(summary: Any, items: Sequence[tuple[Candidate, dict[str, Any]]], opts: Any) -> str:
    """The report page for a run (`summary`: a `PrepareSummary`; `items`: every candidate with its
    captions.jsonl / prepare-dropped.jsonl line; `opts`: the `PrepareOptions`)."""
    from tubelet.data.prepare import REASONS

    kept = [(c, ln) for c, ln in items if c.reason is None]
    dropped = [(c, ln) for c, ln in items if c.reason is not None]
    thresholds = {
        "too_short": f"--min-seconds {opts.min_seconds:g}"
        + (f", --clip-frames {opts.clip_frames}" if opts.clip_frames else ""),
        "borders": f"--max-border {opts.max_border:g} (border luma <= {opts.border_luma:g})",
        "too_small": f"--min-size {opts.min_size}",
        "static": f"--min-motion {opts.min_motion:g} %/s",
        "extreme_motion": f"--max-motion {opts.max_motion:g} %/s",
        "text": f"--max-text {opts.max_text:g} of the frame" if opts.ocr else "off (--ocr)",
        "duplicate": f"--dup-distance {opts.dup_distance:g} bits",
        "no_caption": "--keep-uncaptioned " + ("on" if opts.keep_uncaptioned else "off"),
        "unreadable": "",
    }
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        # nothing but the inline images and styles may load: the page opens the same offline
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        "<title>tubelet data prepare report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>tubelet data prepare</h1>",
        "<table>",
    ]
    facts = [
        ("dataset", summary.out),
        ("sources read", f"{summary.sources_read} of {summary.sources} ({len(summary.failed)} failed)"),
        ("scenes found", summary.scenes),
        ("candidate clips", summary.candidates),
        (
            "clips kept",
            f"{summary.written} ({summary.kept_seconds:.1f} s = {summary.kept_seconds / 3600:.3f} h)",
        ),
        ("footage read", f"{summary.source_seconds:.1f} s"),
        (
            "share kept",
            f"{summary.kept_seconds / summary.source_seconds:.1%}" if summary.source_seconds else "-",
        ),
    ]
    out += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts]
    out.append("</table>")

    out.append(
        "<h2>Filters</h2><table><tr><th>filter</th><th>dropped</th><th>threshold</th><th>why</th></tr>"
    )
    out.append(f'<tr><td>kept</td><td class="n">{len(kept)}</td><td></td><td></td></tr>')
    for reason, why in REASONS.items():
        n = sum(1 for c, _ in dropped if c.reason == reason)
        out.append(
            f'<tr><td>{_e(reason)}</td><td class="n">{n}</td><td>{_e(thresholds[reason])}</td><td>{_e(why)}</td></tr>'
        )
    out.append("</table>")

    out.append('<h2>Scores</h2><div class="hists">')
    kd = [c.duration for c, _ in kept]
    dd = [c.duration for c, _ in dropped]
    out.append(
        _histogram(
            "duration (s)",
            kd,
            dd,
            [(opts.min_seconds, "min"), *([(opts.max_seconds, "max")] if not opts.clip_frames else [])],
            False,
        )
    )
    km = [c.motion for c, _ in kept]
    dm = [c.motion for c, _ in dropped if c.reason != "too_short"]
    out.append(
        _histogram(
            "motion (% of width per s)", km, dm, [(opts.min_motion, "min"), (opts.max_motion, "max")], True
        )
    )
    kb = [c.border for c, _ in kept]
    db = [c.border for c, _ in dropped]
    out.append(_histogram("border (fraction of frame)", kb, db, [(opts.max_border, "max")], False))
    out.append("</div>")

    if summary.failed:
        out.append("<h2>Sources skipped</h2><ul>")
        out += [f"<li>{_e(s)}: {_e(c)}</li>" for s, c in summary.failed]
        out.append("</ul>")
    if summary.uncaptioned:
        kept_or_not = "kept with an empty caption" if opts.keep_uncaptioned else "dropped"
        out.append(f"<h2>Clips without a caption ({len(summary.uncaptioned)}, {kept_or_not})</h2><ul>")
        out += [f"<li>{_e(v)}</li>" for v in summary.uncaptioned[:500]]
        out.append("</ul>")

    out.append(f"<h2>Kept clips ({len(kept)})</h2><div class=grid>")
    out += [_figure(c, ln) for c, ln in kept[:MAX_KEPT_THUMBS]]
    out.append("</div>")
    if len(kept) > MAX_KEPT_THUMBS:
        out.append(f"<p>... and {len(kept) - MAX_KEPT_THUMBS} more (captions.jsonl)</p>")
    for reason in REASONS:
        group = [(c, ln) for c, ln in dropped if c.reason == reason]
        if not group:
            continue
        out.append(f"<h2>Dropped: {_e(reason)} ({len(group)})</h2><div class=grid>")
        out += [_figure(c, ln) for c, ln in group[:MAX_DROPPED_THUMBS]]
        out.append("</div>")
        if len(group) > MAX_DROPPED_THUMBS:
            out.append(f"<p>... and {len(group) - MAX_DROPPED_THUMBS} more (prepare-dropped.jsonl)</p>")
    out.append("</body></html>\n")
    return "\n".join(out)

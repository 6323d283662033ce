"""VBench normalisation: per-dimension min/max scaling and the Quality / Semantic / Total scores.

Constants from VBench (``scripts/constant.py``, ``scripts/cal_final_score.py``):

    norm_d = (raw_d - Min_d) / (Max_d - Min_d) * w_d      (w = 0.5 for dynamic degree, else 1)
    Quality  = sum(norm over the 7 quality dimensions) / 6.5    (6.5 = sum of their weights)
    Semantic = sum(norm over the 9 semantic dimensions) / 9
    Total    = (4 * Quality + Semantic) / 5

Raw scores and results are fractions in [0, 1] (the leaderboard shows them x 100). When only some
dimensions are present, a *partial* score is given instead: the weighted mean of the normalised
dimensions that are present, with the list of dimensions it covers. A partial score is not
comparable with a leaderboard number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DIMENSION_RANGES",
    "DIMENSION_WEIGHTS",
    "QUALITY_DIMENSIONS",
    "SEMANTIC_DIMENSIONS",
    "normalise",
    "vbench_scores",
]

# (Min, Max) per dimension; every dimension not listed uses (0, 1).
DIMENSION_RANGES: dict[str, tuple[float, float]] = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}

DIMENSION_WEIGHTS: dict[str, float] = {
    name: (0.5 if name == "dynamic_degree" else 1.0) for name in DIMENSION_RANGES
}

QUALITY_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
)
SEMANTIC_DIMENSIONS: tuple[str, ...] = (
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "appearance_style",
    "temporal_style",
    "overall_consistency",
)


def normalise(name: str, raw: float) -> float:
    """VBench's weighted min/max normalisation of one raw dimension score (a fraction)."""
    if name not in DIMENSION_RANGES:
        raise KeyError(f"{name!r} is not a VBench dimension; known: {', '.join(DIMENSION_RANGES)}")
    lo, hi = DIMENSION_RANGES[name]
    return (float(raw) - lo) / (hi - lo) * DIMENSION_WEIGHTS[name]


def _group(norm: Mapping[str, float], names: tuple[str, ...]) -> dict[str, Any]:
    present = [n for n in names if n in norm]
    weight = sum(DIMENSION_WEIGHTS[n] for n in present)
    value = sum(norm[n] for n in present) / weight if present else None
    return {
        "score": value,
        "complete": len(present) == len(names),
        "covers": present,
        "missing": [n for n in names if n not in norm],
    }


def vbench_scores(raw: Mapping[str, float | None], stand_ins: Iterable[str] = ()) -> dict[str, Any]:
    """VBench Quality / Semantic / Total from raw dimension scores (fractions in [0, 1]).

    Dimensions that are not VBench dimensions (or have no score) are ignored. ``quality``,
    ``semantic`` and ``total`` are set only when every dimension they need is present; otherwise
    ``partial`` gives the weighted mean of what is present per group, with ``covers``.

    Args:
        raw: {dimension name: raw score or None}.
        stand_ins: names of dimensions computed by a stand-in method (listed in the result).
    Returns:
        {"quality", "semantic", "total": float | None, "normalised": {name: float},
         "covers": [names], "missing": [names], "partial": {group: {...}} (only when incomplete),
         "stand_ins": [names], "official": bool, "note": str}
    """
    norm = {n: normalise(n, v) for n, v in raw.items() if n in DIMENSION_RANGES and v is not None}
    q = _group(norm, QUALITY_DIMENSIONS)
    s = _group(norm, SEMANTIC_DIMENSIONS)
    quality = q["score"] if q["complete"] else None
    semantic = s["score"] if s["complete"] else None
    total = (4.0 * quality + semantic) / 5.0 if quality is not None and semantic is not None else None
    used_stand_ins = sorted(set(stand_ins) & set(norm))
    out: dict[str, Any] = {
        "quality": quality,
        "semantic": semantic,
        "total": total,
        "normalised": norm,
        "covers": [n for n in (*QUALITY_DIMENSIONS, *SEMANTIC_DIMENSIONS) if n in norm],
        "missing": q["missing"] + s["missing"],
        "stand_ins": used_stand_ins,
    }
    partial = {}
    for group, info in (("quality", q), ("semantic", s)):
        if not info["complete"] and info["covers"]:
            partial[group] = {"score": info["score"], "covers": info["covers"], "missing": info["missing"]}
    if partial:
        out["partial"] = partial
    out["official"] = total is not None and not used_stand_ins
    notes = []
    if partial or total is None:
        notes.append(
            "partial: covers only "
            + (", ".join(out["covers"]) or "no VBench dimension")
            + "; not a leaderboard score"
        )
    if used_stand_ins:
        notes.append(
            "uses stand-in methods for " + ", ".join(used_stand_ins) + "; not an official VBench number"
        )
    out["note"] = "; ".join(notes) if notes else "all 16 VBench dimensions present"
    return out

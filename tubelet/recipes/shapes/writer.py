"""Writing a shapes-world dataset: videos, bilingual captions, scenes and the generator settings."""

from __future__ import annotations

import functools
import json
import multiprocessing
import re
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from tubelet.core.files import atomic_write_json
from tubelet.errors import DataError
from tubelet.recipes.shapes.grammar import COLORS, MOTIONS, SHAPES
from tubelet.recipes.shapes.render import _frame_size, make_clip, scene_boxes

__all__ = ["MARKER", "write_dataset"]

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
    held: Collection[tuple[str, ...]],  # (color, shape, motion) triples
    free_motion: float = 0.0,
) -> tuple[str, dict[str, str], dict[str, Any]] | None:
    """Render and write clip i of a dataset; None when it holds a held-out combination."""
    from tubelet.media import write_video

    clip = make_clip((seed, i), frames=frames, size=size, fps=fps, noise=noise, free_motion=free_motion)
    if held and any((o.color, o.shape, o.motion) in held for o in clip.scene.spec.objects):
        return None
    rel = f"videos/{i:06d}.mp4"
    write_video(out / rel, clip.frames, fps, sidecar=False)
    scene = clip.scene.to_dict()
    scene["boxes"] = scene_boxes(clip.scene, frames=frames, size=size)
    return rel, dict(clip.captions), scene


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
    free_motion: float = 0.0,
) -> Path:
    """Write `num` clips to `out`: videos/NNNNNN.mp4, captions.jsonl (an English and a Chinese line
    per clip), scenes.jsonl (the full scene per clip) and shapes.json (the generator settings).

    Clip i is `make_clip((seed, i), ...)`. Refuses (DataError) to write into a non-empty directory
    that is not a previous shapes dataset; a previous one is regenerated in place.
    `holdout`: (color, shape, motion) combinations kept out of the data: a clip with an object of
    such a combination (any size) is skipped, so the remaining clips keep their names and seeds.
    `workers` > 1 renders and encodes clips in that many processes (the output is identical).
    `free_motion`: the fraction of clips whose motion text cannot say (diagonal, curved, speeding
    up, slowing down, stopping half way, crossing): for training box control.
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
    if not 0.0 <= free_motion <= 1.0:
        raise DataError(f"free_motion must be a fraction in [0, 1], got {free_motion}")
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
        "generator": "tubelet.recipes.shapes",
        "version": 1,
        "complete": False,
        "num": num,
        "seed": seed,
        "frames": frames,
        "size": [h, w],
        "fps": fps,
        "noise": noise,
        **({"free_motion": free_motion} if free_motion else {}),
        "holdout": sorted([list(c) for c in held]),
    }
    # the marker goes first so that an interrupted write can be regenerated in place
    atomic_write_json(out / MARKER, meta)
    t0 = time.perf_counter()
    skipped = 0
    captions_tmp = out / "captions.jsonl.tmp"
    scenes_tmp = out / "scenes.jsonl.tmp"
    job = functools.partial(
        _write_one, out=out, seed=seed, frames=frames, size=(h, w), fps=fps, noise=noise, held=held,
        free_motion=free_motion,
    )  # fmt: skip
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
                boxes = scene.pop("boxes")  # every object's exact box per frame (tubelet.boxes format)
                for lang in ("en", "zh"):
                    line = {"video": rel, "caption": captions[lang], "lang": lang, "boxes": boxes}
                    fc.write(json.dumps(line, ensure_ascii=False) + "\n")
                fs.write(json.dumps({"video": rel, "seed": [seed, i], "scene": scene}) + "\n")
    finally:
        if pool is not None:
            pool.terminate()
    captions_tmp.replace(out / "captions.jsonl")
    scenes_tmp.replace(out / "scenes.jsonl")
    meta.update(complete=True, skipped_holdout=skipped, seconds=round(time.perf_counter() - t0, 3))
    atomic_write_json(out / MARKER, meta)
    return out

"""Generating a pipeline's clips for evaluation: prompt suites and VBench-style sample folders.

* `read_suite(path, check)` / `generate_suite(pipe, items)`: a suite is a jsonl file of
  ``{"prompt", "seed"[, "lang"]}`` lines; every prompt is generated with its own seed and the model's
  default settings, in batches, and handed to the caller with its raw frames (no video compression)
  to score (a recipe's scorer, e.g. the oracle of `tubelet eval oracle`); `videos_out`
  also writes the clips as mp4 + ``captions.jsonl``, so that they can be re-scored from the files.
* `sample_prompts(pipe, prompts, out_dir, samples)`: clips named the VBench way,
  ``{prompt}-{index}.mp4`` (index 0..samples-1, one folder), for the official VBench tool, plus a
  ``captions.jsonl`` for ``tubelet eval videos``. Clip ``index`` of every prompt uses seed
  ``seed + index``, so any clip can be regenerated alone with ``tubelet generate PROMPT --seed``.

Every clip is a `GenerationRequest` (prompt, seed, settings) submitted through
`TextToVideoPipeline.generate_many`, which batches consecutive text-to-video requests with one seed
per prompt (`TextToVideoPipeline.__call__` with a list of seeds),
so a clip does not depend on which batch it was in.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tubelet.core.files import atomic_write_text
from tubelet.errors import DataError, TubeletError

__all__ = [
    "SuiteClip",
    "SuiteItem",
    "generate_suite",
    "generation_settings",
    "read_prompts",
    "read_suite",
    "sample_prompts",
    "vbench_name",
]

VBENCH_MAX_PROMPT_CHARS = (
    180  # VBench-2.0 keeps the first 180 characters of a prompt too long to be a file name
)
_MAX_NAME_BYTES = 255  # file-name limit of common file systems


@dataclass
class SuiteItem:
    """One line of a prompt suite."""

    prompt: str
    seed: int
    lang: str | None = None  # "en" / "zh"; None: detected from the prompt
    line: int = 0


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    from tubelet.core.parsing import read_jsonl

    return read_jsonl(path, error=DataError, what="suite file")


def read_suite(path: str | Path, check: Callable[[str], object] | None = None) -> list[SuiteItem]:
    """Read a suite jsonl: one ``{"prompt": str, "seed": int, "lang": "en"|"zh" (optional)}`` per line.

    `check(prompt)`, if given, validates each prompt before anything is generated (e.g. a recipe's
    caption parser) by raising a `TubeletError` or ValueError. Raises `DataError` naming the file
    and line.
    """
    p = Path(path)
    items = []
    for n, row in _json_lines(p):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f"{p}:{n}: expected an object with a non-empty 'prompt' string")
        seed = row.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DataError(f"{p}:{n}: 'seed' must be an integer, got {seed!r}")
        lang = row.get("lang")
        if lang is not None and lang not in ("en", "zh"):
            raise DataError(f"{p}:{n}: 'lang' must be 'en' or 'zh', got {lang!r}")
        if check is not None:
            try:
                check(row["prompt"])
            except (TubeletError, ValueError) as e:
                raise DataError(f"{p}:{n}: {e}") from None
        items.append(SuiteItem(row["prompt"], seed, lang, n))
    if not items:
        raise DataError(f"{p}: the suite holds no prompts")
    return items


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line) or a jsonl file (``{"prompt": ...}`` per line).

    A file whose name ends in .jsonl / .json, or whose first non-blank line starts with "{", is read
    as jsonl. Blank lines are skipped; duplicates are an error (VBench names clips by prompt).
    """
    p = Path(path)
    from tubelet.core.parsing import check_text, read_text

    text = check_text(read_text(p, error=DataError, what="prompts file"), str(p), error=DataError)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    prompts: list[tuple[int, str]] = []
    if p.suffix.lower() in (".jsonl", ".json") or first.startswith("{"):
        for n, row in _json_lines(p):
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("prompt"), str)
                or not row["prompt"].strip()
            ):
                raise DataError(f"{p}:{n}: expected an object with a non-empty 'prompt' string")
            prompts.append((n, row["prompt"].strip()))
    else:
        prompts = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not prompts:
        raise DataError(f"{p}: no prompts")
    seen: dict[str, int] = {}
    for n, pr in prompts:
        if pr in seen:
            raise DataError(
                f"{p}:{n}: duplicate prompt (first on line {seen[pr]}); VBench names clips by prompt"
            )
        seen[pr] = n
    return [pr for _, pr in prompts]


def vbench_name(prompt: str, index: int, ext: str = ".mp4") -> str:
    """VBench's clip file name ``{prompt}-{index}.mp4``.

    A prompt too long for a file name keeps its first 180 characters (VBench-2.0's rule; fewer if
    its UTF-8 bytes still do not fit); "/" (not allowed in file names) becomes "_".
    """
    stem = prompt.replace("/", "_").replace("\0", "")
    suffix = f"-{index}{ext}"
    if len((stem + suffix).encode("utf-8")) > _MAX_NAME_BYTES:
        stem = stem[:VBENCH_MAX_PROMPT_CHARS]
        while len((stem + suffix).encode("utf-8")) > _MAX_NAME_BYTES:
            stem = stem[:-1]
    return stem + suffix


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def generation_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The settings of a generated clip's metadata that an evaluation report records."""
    keys = (
        "model",
        "num_frames",
        "height",
        "width",
        "num_inference_steps",
        "guidance_scale",
        "sampler",
        "fps",
    )
    return {k: meta.get(k) for k in keys}


def sample_prompts(
    pipe: Any,
    prompts: Sequence[str],
    out_dir: str | Path,
    samples: int = 5,
    *,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    **generate_kwargs: Any,
) -> list[Path]:
    """Write `samples` clips per prompt as ``out_dir/{prompt}-{index}.mp4`` (+ json sidecars) and
    ``out_dir/captions.jsonl``. Clip `index` uses seed ``seed + index``. Returns the written paths."""
    from tqdm.auto import tqdm

    if samples < 1:
        raise DataError(f"samples must be >= 1, got {samples}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(pr, i) for pr in prompts for i in range(samples)]
    names = [vbench_name(pr, i) for pr, i in jobs]
    clash = [n for n, c in Counter(names).items() if c > 1]
    if clash:
        raise DataError(f"prompts give the same VBench file name {clash[0]!r}; make them distinct")
    requests = [_request(pr, seed + i, generate_kwargs) for pr, i in jobs]
    paths: list[Path] = []
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(jobs), desc="sampling", unit="clip", disable=not progress) as bar:
        for (pr, i), res in zip(jobs, pipe.generate_many(requests, batch_size=batch_size)):
            name = vbench_name(pr, i)
            paths.append(res.save(out / name))
            rows.append({"video": name, "caption": pr, "index": i, "seed": seed + i})
            bar.update(1)
    _write_jsonl(out / "captions.jsonl", rows)
    return paths


def _request(prompt: str, seed: int, settings: dict[str, Any]) -> Any:
    """The `GenerationRequest` of one evaluation clip (settings: request fields, e.g. num_inference_steps)."""
    from tubelet.pipelines.request import GenerationRequest, RequestError

    try:
        return GenerationRequest(prompt=prompt, seed=seed, **settings)
    except TypeError as e:
        raise RequestError(f"unknown generation setting ({e})") from None


@dataclass
class SuiteClip:
    """One generated suite prompt: the suite line, the pipeline's output (`.frames` uint8 (T, H, W, 3),
    `.metadata`) and, with `videos_out`, the clip's file name there."""

    item: SuiteItem
    output: Any
    video: str | None = None


def generate_suite(
    pipe: Any,
    items: Sequence[SuiteItem],
    *,
    batch_size: int = 8,
    videos_out: str | Path | None = None,
    progress: bool = True,
    desc: str = "suite",
    **generate_kwargs: Any,
) -> Iterator[SuiteClip]:
    """Generate every suite prompt (its own seed; the model's default settings unless overridden by
    `generate_kwargs`), yielding the clips in suite order.

    With `videos_out`, clips are also written there as ``{n:05d}.mp4`` and, once the last clip has
    been yielded, a ``captions.jsonl`` (``{"video", "caption", "seed"[, "lang"]}`` per clip).
    """
    from tqdm.auto import tqdm

    if not items:
        raise DataError("the suite holds no prompts")
    out = Path(videos_out) if videos_out is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise DataError(f"{out}: exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    requests = [_request(it.prompt, it.seed, generate_kwargs) for it in items]
    with tqdm(total=len(items), desc=desc, unit="prompt", disable=not progress) as bar:
        for it, clip in zip(items, pipe.generate_many(requests, batch_size=batch_size)):
            name = None
            if out is not None:
                name = f"{len(rows):05d}.mp4"
                clip.save(out / name)
                row = {"video": name, "caption": it.prompt, "seed": it.seed}
                rows.append(row if it.lang is None else {**row, "lang": it.lang})
            yield SuiteClip(it, clip, name)
            bar.update(1)
    if out is not None:
        _write_jsonl(out / "captions.jsonl", rows)

"""Precomputed training inputs: VAE latents (and frozen text embeddings) in safetensors shards.

`tubelet data cache DIR --model MODEL_DIR --out CACHE_DIR` runs the VAE once over a dataset so that
training never decodes videos nor runs the VAE each step. Layout of CACHE_DIR::

    index.json                {"version": 1, "model": ..., "data": DataConfig, "buckets": [[F, H, W], ...],
                               "samples": [{"path", "captions", "bucket", "shard", "row", "start"}, ...]}
    shard-00000.safetensors   "latents": (N, C, F', H', W') posterior means, NOT normalised (the trainer
                              normalises with the VAE's latents_mean/std), float16 or float32
                              "context"/"mask": (N, K, L, D) / (N, K, L) frozen text embeddings of the
                              K captions of each sample, only when the model's text encoder is frozen
    uncond.safetensors        with those: "context"/"mask" (1, L, D) / (1, L) of the empty prompt (caption
                              dropout), so that training never loads the frozen text encoder

A pixel cache (`tubelet data cache DIR --pixels --out CACHE_DIR`, `build_pixel_cache`) holds the
decoded clips instead, for pixel-space models (or for a VAE run) on machines where decoding videos
every step is the bottleneck (a GPU): index.json has "kind": "pixels" and each shard holds
"pixels": (N, 3, F, H, W) uint8, exactly the decoded frames; batches carry them as uint8 and the
trainer converts them on the training device.

A shard holds the samples of one bucket. Shards are written atomically and index.json last,
so an interrupted run leaves no index (run it again; nothing half-written is ever read).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tubelet.config import config_from_dict, config_to_dict
from tubelet.core.files import atomic_write_json
from tubelet.data.dataset import DRAW_CAPTION, DataConfig, SampleKey, VideoDataset, as_key, sample_rng
from tubelet.data.loader import Batch
from tubelet.errors import DataError, ModelLoadError
from tubelet.media import unit_to_frames
from tubelet.models.codec import LatentCodec
from tubelet.models.hub import load_safetensors, save_state_dict

CACHE_VERSION = 1


def _find_vae(model_dir: Path):
    from tubelet.models.vae import CausalVideoVAE

    d = model_dir / "vae" if (model_dir / "vae").is_dir() else model_dir
    if not (d / "config.json").is_file():
        raise ModelLoadError(
            f"{model_dir}: no VAE found (expected {model_dir}/vae/ or a VAE model directory)"
        )
    return CausalVideoVAE.from_pretrained(d)


@torch.no_grad()
def build_cache(
    data_dir: str | Path,
    model_dir: str | Path,
    out: str | Path,
    *,
    data: DataConfig | None = None,
    batch_size: int = 8,
    clips_per_video: int = 1,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cpu",
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Encode every sample of `data_dir` with the VAE of `model_dir` into `out` (see module doc),
    `batch_size` clips per VAE call on `device`, with `workers` decoding processes."""
    out = _prepare_out(out)
    _check_counts(batch_size=batch_size, clips_per_video=clips_per_video, workers=workers)
    cfg, ds = _open_dataset(data_dir, data, progress)
    vae = _find_vae(Path(model_dir)).to(device)
    if torch.device(device).type == "cpu":  # oneDNN convolutions for the frame-by-frame encoder
        from tubelet.kernels import apply_cpu_kernels

        apply_cpu_kernels(vae)
    codec = LatentCodec(vae)  # the cache stores raw latents; training normalises them (codec.normalize)
    text: Any = None  # an HFTextEncoder when the model has one (duck-typed: `encode(texts)`)
    md = Path(model_dir)
    if (md / "text_encoder" / "config.json").is_file():
        from tubelet.models.hub import read_config_json

        if read_config_json(md / "text_encoder").get("_class") == "HFTextEncoder":
            from tubelet.models.text import load_text_encoder

            text = load_text_encoder(md / "text_encoder", device=device)
    with _writing(out):
        bar = _progress_bar(len(ds) * clips_per_video, "caching latents", progress)
        entries: list[dict[str, Any]] = []
        shard = 0
        for b, members in enumerate(ds.bucket_members):
            if not members:
                continue
            rows: list[torch.Tensor] = []
            ctxs: list[torch.Tensor] = []
            masks: list[torch.Tensor] = []
            box_rows: list[dict[str, torch.Tensor] | None] = []
            jobs = [
                (i, _start(ds.samples[i], cfg, ds.buckets[b].frames, k, clips_per_video))
                for i in members
                for k in range(clips_per_video)
            ]
            loader = torch.utils.data.DataLoader(
                _DecodeJobs(ds, jobs, uint8=False), batch_size=None, num_workers=workers, shuffle=False
            )
            for chunk in _batched(_decoded(loader, jobs, ds, b, bar), batch_size):
                z = codec.encode_raw(
                    torch.stack([video for _, video in chunk]).to(device)
                )  # (n, C, F', H', W')
                for (meta, _), zj in zip(chunk, z):
                    box_rows.append(meta.pop("_boxes", None))
                    meta.update(shard=shard, row=len(rows))
                    rows.append(zj.to(dtype).cpu())
                    entries.append(meta)
                    if text is not None:
                        emb = text.encode(meta["captions"])
                        ctxs.append(emb.context.to(dtype).cpu())
                        masks.append(emb.mask.cpu())
            if rows:
                tensors = {"latents": torch.stack(rows)}
                if ctxs:
                    tensors["context"] = torch.stack(_pad_k(ctxs))
                    tensors["mask"] = torch.stack(_pad_k(masks))
                tensors.update(_box_tensors(box_rows, ds.buckets[b].frames))
                save_state_dict(tensors, out / f"shard-{shard:05d}.safetensors")
                shard += 1
        if text is not None:  # the empty prompt too: caption dropout then needs no text encoder
            emb = text.encode([""])
            save_state_dict(
                {"context": emb.context.to(dtype).cpu(), "mask": emb.mask.cpu()}, out / "uncond.safetensors"
            )
        return _finish(
            out, data_dir, cfg, ds, entries, bar, kind="latents", model=str(Path(model_dir).resolve())
        )


def _decoded(loader: Any, jobs: list[tuple[int, int]], ds: VideoDataset, bucket: int, bar: Any) -> Iterator:
    """(entry, clip) for each job the loader decoded; unreadable files are recorded and skipped."""
    for j, clip in loader:
        i, start = jobs[j]
        s = ds.samples[i]
        if bar is not None:
            bar.update(1)
        if isinstance(clip, str):
            ds._record(s.path, clip)
            continue
        meta = {"path": s.path, "captions": list(s.captions), "bucket": bucket, "start": start}
        boxes = ds.boxes_of(i, start)  # the first caption line's tracks (kept in the shard)
        if boxes is not None:
            meta["_boxes"] = boxes
        yield meta, clip


def _box_tensors(rows: list[dict[str, torch.Tensor] | None], frames: int) -> dict[str, torch.Tensor]:
    """A shard's box tracks ("box_boxes" (n, N, T, 4), "box_present", "box_hard", "box_objects";
    tracks padded as absent), or nothing when no clip of the shard has boxes."""
    if all(r is None for r in rows):
        return {}
    from tubelet.data.loader import collate_boxes

    arrays = collate_boxes(rows, frames)
    return {f"box_{k}": arrays[k] for k in ("boxes", "present", "hard", "objects")}


def _batched(items: Iterator, n: int) -> Iterator[list]:
    batch: list = []
    for x in items:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


class _DecodeJobs(torch.utils.data.Dataset):
    """job index -> (job index, clip or an error string); run in loader workers. The clip is
    (3, F, H, W) uint8, or with `uint8=False` float32 in [-1, 1] exactly as `VideoDataset.load` gives it."""

    def __init__(self, ds: VideoDataset, jobs: list[tuple[int, int]], uint8: bool = True) -> None:
        self.ds, self.jobs, self.uint8 = ds, jobs, uint8

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor | str]:
        i, start = self.jobs[j]
        try:
            video = self.ds.load(i, start=start, caption_index=0)["video"]  # (3, F, H, W) in [-1, 1]
        except Exception as e:
            return j, getattr(e, "cause", None) or f"{type(e).__name__}: {e}"
        if not self.uint8:
            return j, video
        return j, unit_to_frames(video)


def build_pixel_cache(
    data_dir: str | Path,
    out: str | Path,
    *,
    data: DataConfig | None = None,
    clips_per_video: int = 1,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Decode every sample of `data_dir` once into a pixel cache at `out` (see the module docstring),
    with `workers` decoding processes. Unreadable files are skipped and listed in index.json."""
    out = _prepare_out(out)
    _check_counts(batch_size=1, clips_per_video=clips_per_video, workers=workers)
    cfg, ds = _open_dataset(data_dir, data, progress)
    with _writing(out):
        bar = _progress_bar(len(ds) * clips_per_video, "caching clips", progress)
        entries: list[dict[str, Any]] = []
        shard = 0
        for b, members in enumerate(ds.bucket_members):
            if not members:
                continue
            jobs = [
                (i, _start(ds.samples[i], cfg, ds.buckets[b].frames, k, clips_per_video))
                for i in members
                for k in range(clips_per_video)
            ]
            loader = torch.utils.data.DataLoader(
                _DecodeJobs(ds, jobs), batch_size=None, num_workers=workers, shuffle=False
            )
            rows: list[torch.Tensor] = []
            box_rows: list[dict[str, torch.Tensor] | None] = []
            for meta, clip in _decoded(loader, jobs, ds, b, bar):
                box_rows.append(meta.pop("_boxes", None))
                entries.append({**meta, "shard": shard, "row": len(rows)})
                rows.append(clip)
            if rows:
                tensors = {"pixels": torch.stack(rows), **_box_tensors(box_rows, ds.buckets[b].frames)}
                save_state_dict(tensors, out / f"shard-{shard:05d}.safetensors")
                shard += 1
        return _finish(out, data_dir, cfg, ds, entries, bar, kind="pixels", model=None)


def _open_dataset(
    data_dir: str | Path, data: DataConfig | None, progress: bool
) -> tuple[DataConfig, VideoDataset]:
    cfg = replace(data or DataConfig(), random_start=False)
    ds = VideoDataset(data_dir, cfg, progress=progress)
    if len(ds) == 0:
        raise DataError(f"{data_dir}: no usable samples to cache ({ds.summary()})")
    return cfg, ds


def _progress_bar(total: int, desc: str, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="clip", dynamic_ncols=True)


def _prepare_out(out: str | Path) -> Path:
    """Check (creating nothing) that `out` can become a cache folder."""
    from tubelet.core.files import check_output_location

    out = check_output_location(out, kind="folder", what="cache")
    if out.exists() and any(out.iterdir()) and not (out / "index.json").is_file():
        raise DataError(f"{out}: exists, is not empty and is not a cache; choose another --out")
    return out


MAX_WORKERS = 256


def _check_counts(*, batch_size: int, clips_per_video: int, workers: int) -> None:
    for name, value, low in (("batch_size", batch_size, 1), ("clips_per_video", clips_per_video, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DataError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise DataError(f"workers must be an integer in [0, {MAX_WORKERS}], got {workers!r}")


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[Path]:
    """Create `out` for writing; if the build fails, a folder this call created is removed again."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _finish(
    out: Path,
    data_dir: str | Path,
    cfg: DataConfig,
    ds: VideoDataset,
    entries: list[dict[str, Any]],
    bar: Any,
    *,
    kind: str,
    model: str | None,
) -> Path:
    """Close the progress bar and write index.json, last and atomically: a cache without one was
    interrupted and is never read."""
    if bar is not None:
        bar.close()
    if not entries:
        raise DataError(f"{data_dir}: every sample failed to load; run `tubelet data check {data_dir}`")
    index = {
        "version": CACHE_VERSION,
        "kind": kind,
        "model": model,
        "data": config_to_dict(cfg),
        "buckets": [[bk.frames, bk.height, bk.width] for bk in ds.buckets],
        "unreadable": dict(ds.unreadable),
        "samples": entries,
    }
    atomic_write_json(out / "index.json", index, indent=None)
    return out


def _pad_k(items: list[torch.Tensor]) -> list[torch.Tensor]:
    k = max(t.shape[0] for t in items)
    return [
        torch.cat([t, t[:1].expand(k - t.shape[0], *t.shape[1:])]) if t.shape[0] < k else t for t in items
    ]


def _start(sample: Any, cfg: DataConfig, frames: int, k: int, n: int) -> int:
    if sample.kind == "image" or n == 1:
        return 0
    from tubelet.data.dataset import source_indices

    span = source_indices(0, frames, sample.fps, cfg.fps)[-1] + 1
    last = max(0, sample.num_frames - span)
    return round(last * k / (n - 1))


class LatentCacheDataset(torch.utils.data.Dataset):
    """Samples of a cache: dict(latents (C, F', H', W') float32 | pixels (3, F, H, W) uint8, caption, path,
    bucket[, context, mask]).

    ``ds[key]`` takes a `SampleKey` (index, epoch, seed) or a plain index (epoch 0 of ``cfg.seed``);
    which caption a sample gets is drawn from the key alone (`caption_index`), as in `VideoDataset`.
    """

    def __init__(self, root: str | Path, cfg: DataConfig | None = None) -> None:
        self.root = Path(root)
        idx_path = self.root / "index.json"
        if not idx_path.is_file():
            raise DataError(f"{self.root}: not a cache (no index.json); build one with `tubelet data cache`")
        from tubelet.core.parsing import read_json

        index = read_json(idx_path, error=DataError, what="cache index")
        if not isinstance(index, dict):
            raise DataError(f"{idx_path}: expected a JSON object, got {type(index).__name__}")
        if index.get("version") != CACHE_VERSION:
            raise DataError(f"{idx_path}: cache version {index.get('version')}, expected {CACHE_VERSION}")
        self.index = index
        self.kind = index.get("kind", "latents")
        self.cfg = cfg or config_from_dict(DataConfig, index["data"])
        shapes = [tuple(b) for b in index["buckets"]]
        # Map the cache's buckets onto the training config's buckets (for their batch sizes).
        self.buckets = []
        remap: dict[int, int] = {}
        for i, (f, h, w) in enumerate(shapes):
            match = [
                j for j, b in enumerate(self.cfg.bucket_list) if (b.frames, b.height, b.width) == (f, h, w)
            ]
            if match:
                remap[i] = match[0]
        self.buckets = list(self.cfg.bucket_list)
        self.samples = [s for s in index["samples"] if s["bucket"] in remap]
        if not self.samples:
            raise DataError(
                f"{self.root}: the cache holds buckets {shapes}, none of which is in the training config's "
                f"buckets {[(b.frames, b.height, b.width) for b in self.cfg.bucket_list]}"
            )
        for s in self.samples:
            s["train_bucket"] = remap[s["bucket"]]
        shards = sorted({s["shard"] for s in self.samples})
        self.shards = {k: load_safetensors(self.root / f"shard-{k:05d}.safetensors") for k in shards}

    def bucket_ids(self) -> list[int]:
        return [s["train_bucket"] for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def caption_index(self, key: int | SampleKey) -> int:
        """Which caption of sample ``key.index`` the key draws (pure: the same in every process)."""
        key = as_key(key, self.cfg.seed)
        n = len(self.samples[key.index]["captions"])
        return int(sample_rng(key, DRAW_CAPTION).integers(n)) if n > 1 else 0

    def __getitem__(self, i: int | SampleKey) -> dict[str, Any]:
        key = as_key(i, self.cfg.seed)
        s = self.samples[key.index]
        sh = self.shards[s["shard"]]
        caps = s["captions"]
        k = self.caption_index(key)
        data = (
            {"pixels": sh["pixels"][s["row"]]}
            if self.kind == "pixels"
            else {"latents": sh["latents"][s["row"]].float()}
        )
        item = {
            **data,
            "caption": caps[k],
            "path": s["path"],
            "bucket": s["train_bucket"],
        }
        if "context" in sh:
            item["context"] = sh["context"][s["row"], k].float()
            item["mask"] = sh["mask"][s["row"], k]
        if "box_boxes" in sh:
            item["boxes"] = {
                name: sh[f"box_{name}"][s["row"]] for name in ("boxes", "present", "hard", "objects")
            }
        return item

    def stats(self) -> dict[str, Any]:
        return {"samples": len(self.samples), "skipped_unreadable": len(self.index.get("unreadable", {}))}

    def record_skipped(self, skipped: Any) -> None:  # the cache has nothing left to skip
        return None


def collate_latents(items: list[dict[str, Any]]) -> Batch:
    key = "pixels" if "pixels" in items[0] else "latents"
    out: Batch = {
        "caption": [it["caption"] for it in items],
        "path": [it["path"] for it in items],
        "bucket": items[0]["bucket"],
        "skipped": [],
    }
    if key == "pixels":
        out["pixels"] = torch.stack([it["pixels"] for it in items])
    else:
        out["latents"] = torch.stack([it["latents"] for it in items])
    if "context" in items[0]:
        out["context"] = torch.stack([it["context"] for it in items])
        out["mask"] = torch.stack([it["mask"] for it in items])
    if any("boxes" in it for it in items):
        from tubelet.data.loader import collate_boxes

        frames = next(it["boxes"]["boxes"].shape[1] for it in items if "boxes" in it)
        out["boxes"] = collate_boxes([it.get("boxes") for it in items], frames)
    return out

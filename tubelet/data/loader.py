"""Batches of a `VideoDataset`: `BucketBatchSampler` (every batch from one bucket, disjoint shares
per rank, exact resume), `collate`, and `BucketLoader` / `make_loader`, the DataLoader that hands
the dataset `SampleKey`s and records the unreadable files its workers report.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import Tensor

from tubelet.data.sampling import SampleKey

if TYPE_CHECKING:
    from tubelet.data.dataset import VideoDataset

logger = logging.getLogger("tubelet.data")


class BoxArrays(TypedDict):
    """Box tracks of a batch at its video frames, tracks padded as absent (`collate_boxes`)."""

    boxes: Tensor  # (B, N, T, 4) float (x0, y0, x1, y1) in [0, 1], in the cropped frame
    present: Tensor  # (B, N, T) bool
    hard: Tensor  # (B, N) bool
    objects: Tensor  # (B, N) int64: the prompt's object each track binds to


class Batch(TypedDict, total=False):
    """A training batch, as `collate` (decoded videos) and `collate_latents` (caches) make it.

    One bucket per batch (B clips of the same F x H x W). Exactly one of video / pixels / latents.
    """

    video: Tensor  # (B, 3, F, H, W) float in [-1, 1] (decoded from the files)
    pixels: Tensor  # (B, 3, F, H, W) uint8 (a pixel cache)
    latents: Tensor  # (B, C, F', H', W') raw VAE latents (a latent cache; normalised by the task)
    context: Tensor  # (B, K, L, D) or (B, L, D) frozen text states cached with the latents
    mask: Tensor  # (B, L) bool, with context
    caption: list[str]  # one per clip ("" = dropped later by the objective, not here)
    path: list[str]
    bucket: int
    skipped: list[tuple[str, str]]  # (file, cause) found unreadable while filling the batch
    boxes: BoxArrays  # when the dataset's captions carry box tracks


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of sample indices, each from one bucket, at that bucket's (per-rank) batch size.

    Every epoch the samples of each bucket are shuffled (seed, epoch), cut into global batches of
    ``batch_size * world_size`` (incomplete ones dropped), and the global batches of all buckets
    are shuffled together. Rank r takes slice r of every global batch, so all ranks train on the
    same bucket at the same step and their shares are disjoint.

    The global batches depend on (seed, epoch, the samples' buckets and the global batch size)
    only: 1 process with batch 4 and 2 processes with batch 2 see the same global batches in the
    same order, rank 0 the first half of each. `keyed_batches` yields the same batches as
    `SampleKey` lists (index, epoch, seed), which is what `BucketLoader` hands the dataset: the
    per-sample draws then follow the sample, not the process.

    Iterating yields the rest of the current epoch and then moves on to the next epoch.
    ``state_dict()`` = (epoch, position: batches already yielded in it); ``load_state_dict``
    makes the next iteration continue with exactly the batches an uninterrupted run would see.
    With a DataLoader (which prefetches) use the loader's ``state_dict()`` from `make_loader`.
    """

    def __init__(
        self,
        dataset: VideoDataset | Sequence[int],
        batch_sizes: Sequence[int] | None = None,
        *,
        seed: int | None = None,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        # imported here, not at the top: dataset.py imports (and re-exports) this module
        from tubelet.data.dataset import VideoDataset

        if isinstance(dataset, VideoDataset):
            sample_buckets = [s.bucket for s in dataset.samples]
            batch_sizes = batch_sizes or [b.batch_size for b in dataset.buckets]
            seed = dataset.cfg.seed if seed is None else seed
        else:
            sample_buckets = list(dataset)
            if batch_sizes is None:
                raise ValueError(
                    "batch_sizes is needed when the sampler gets bucket ids instead of a dataset"
                )
        d_rank, d_world = _dist_rank_world()
        self.rank = d_rank if rank is None else rank
        self.world_size = d_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        self.batch_sizes = list(batch_sizes)
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch sizes must be positive, got {self.batch_sizes}")
        self.seed = 0 if seed is None else seed
        self.shuffle = shuffle
        self.members: list[list[int]] = [[] for _ in self.batch_sizes]
        for i, b in enumerate(sample_buckets):
            if not 0 <= b < len(self.batch_sizes):
                raise ValueError(
                    f"sample {i} has bucket {b}, but there are {len(self.batch_sizes)} batch sizes"
                )
            self.members[b].append(i)
        self.epoch = 0
        self.position = 0
        self.version = 0  # bumped whenever the state is set from outside (set_epoch, load_state_dict)
        for b, m in enumerate(self.members):
            if m and len(m) < self.batch_sizes[b] * self.world_size:
                logger.warning(
                    "bucket %d has %d samples, fewer than one global batch (%d x %d ranks); it is not used",
                    b, len(m), self.batch_sizes[b], self.world_size,
                )  # fmt: skip
        self._fingerprint = [len(m) for m in self.members]

    def _global_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches: list[list[int]] = []
        for b, m in enumerate(self.members):
            size = self.batch_sizes[b] * self.world_size
            order = [m[i] for i in torch.randperm(len(m), generator=g).tolist()] if self.shuffle else list(m)
            batches += [order[i : i + size] for i in range(0, len(order) - size + 1, size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __len__(self) -> int:
        """Batches per epoch."""
        return sum(len(m) // (self.batch_sizes[b] * self.world_size) for b, m in enumerate(self.members))

    def _epoch_batches(self) -> Iterator[tuple[int, list[int]]]:
        """(epoch, this rank's share of the next global batch) for the rest of the current epoch."""
        epoch = self.epoch
        batches = self._global_batches(epoch)
        while self.epoch == epoch and self.position < len(batches):
            gb = batches[self.position]
            per = len(gb) // self.world_size
            self.position += 1
            yield epoch, gb[self.rank * per : (self.rank + 1) * per]
        if self.epoch == epoch:
            self.epoch, self.position = epoch + 1, 0

    def __iter__(self) -> Iterator[list[int]]:
        for _, batch in self._epoch_batches():
            yield batch

    def keyed_batches(self) -> Iterator[list[SampleKey]]:
        """The batches of `__iter__` (same state), each sample as its `SampleKey` (index, epoch, seed)."""
        for epoch, batch in self._epoch_batches():
            yield [SampleKey(i, epoch, self.seed) for i in batch]

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch on the next iteration."""
        self.epoch, self.position = int(epoch), 0
        self.version += 1

    def state_dict(self) -> dict[str, Any]:
        """Where the sampler stands: epoch and batches already yielded in it (+ checks)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "bucket_sizes": list(self._fingerprint),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`; warns when the data or the set-up changed since."""
        for key in ("seed", "world_size", "bucket_sizes"):
            saved, now = state.get(key), self.state_dict()[key]
            if saved is not None and saved != now:
                logger.warning(
                    "resuming the batch sampler with a different %s (%s, was %s): batches will differ",
                    key,
                    now,
                    saved,
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.version += 1


def collate(items: Sequence[dict[str, Any]]) -> Batch:
    """Stack videos (B, 3, F, H, W); captions and paths stay lists; skipped files are merged."""
    buckets = {it["bucket"] for it in items}
    if len(buckets) != 1:
        raise ValueError(f"a batch mixes buckets {sorted(buckets)}; use BucketBatchSampler")
    batch: Batch = {
        "video": torch.stack([it["video"] for it in items]),  # (B, 3, F, H, W)
        "caption": [it["caption"] for it in items],
        "path": [it["path"] for it in items],
        "bucket": items[0]["bucket"],
        "skipped": [s for it in items for s in it.get("skipped", ())],
    }
    if any("boxes" in it for it in items):
        batch["boxes"] = collate_boxes([it.get("boxes") for it in items], items[0]["video"].shape[1])
    return batch


def collate_boxes(per_item: Sequence[Any], frames: int) -> BoxArrays:
    """Box arrays of a batch, tracks padded (absent) to the most: boxes (B, N, T, 4), present (B, N, T),
    hard (B, N), objects (B, N). An item without boxes has only absent tracks."""
    n = max((len(b["hard"]) for b in per_item if b is not None), default=0)
    size = len(per_item)
    out: BoxArrays = {
        "boxes": torch.zeros(size, n, frames, 4),
        "present": torch.zeros(size, n, frames, dtype=torch.bool),
        "hard": torch.zeros(size, n, dtype=torch.bool),
        "objects": torch.zeros(size, n, dtype=torch.long),
    }
    for i, b in enumerate(per_item):
        if b is None:
            continue
        k = len(b["hard"])
        out["boxes"][i, :k] = b["boxes"]
        out["present"][i, :k] = b["present"]
        out["hard"][i, :k] = b["hard"]
        out["objects"][i, :k] = b["objects"]
    return out


class _KeyedBatchSampler:
    """A BucketBatchSampler's batches as `SampleKey` lists (the DataLoader's batch_sampler)."""

    def __init__(self, sampler: BucketBatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[SampleKey]]:
        return self.sampler.keyed_batches()

    def __len__(self) -> int:
        return len(self.sampler)


class BucketLoader(torch.utils.data.DataLoader):
    """DataLoader that records unreadable files reported by workers in the dataset and counts the
    batches it handed out, so that its state is exact although workers prefetch ahead.

    The dataset gets `SampleKey`s (index, epoch, seed) from the sampler, so what each sample is
    (caption, start frame, replacement) does not depend on the process or worker that loads it.

    A new iteration continues after the last batch handed out (prefetched batches that were never
    handed out are produced again), unless the sampler was repositioned in between
    (``set_epoch`` / ``load_state_dict``).
    """

    dataset: VideoDataset  # (DataLoader types it as any Dataset)

    def __init__(
        self, dataset: VideoDataset, sampler: BucketBatchSampler, num_workers: int, **kwargs: Any
    ) -> None:
        super().__init__(
            dataset,
            batch_sampler=_KeyedBatchSampler(sampler),
            num_workers=num_workers,
            collate_fn=collate,
            **kwargs,
        )
        self._bucket_sampler = sampler
        self._epoch, self._delivered = sampler.epoch, sampler.position
        self._synced_version = sampler.version

    # a generator over the parent's batches (to count them), not a _BaseDataLoaderIter as declared
    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        sampler = self._bucket_sampler
        if sampler.version == self._synced_version:
            sampler.epoch, sampler.position = self._epoch, self._delivered
        else:
            self._epoch, self._delivered = sampler.epoch, sampler.position
            self._synced_version = sampler.version
        epoch_len = len(sampler)
        for batch in super().__iter__():
            if batch["skipped"]:
                self.dataset.record_skipped(batch["skipped"])
            self._delivered += 1
            yield batch
        if self._delivered >= epoch_len:
            self._epoch, self._delivered = self._epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch on the next iteration."""
        self._bucket_sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Sampler state counting only the batches this loader handed out (or, when the sampler was
        repositioned since the last iteration, where it was put)."""
        state = self._bucket_sampler.state_dict()
        if self._bucket_sampler.version == self._synced_version:
            state.update(epoch=self._epoch, position=self._delivered)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`."""
        self._bucket_sampler.load_state_dict(state)


def make_loader(
    dataset: VideoDataset, sampler: BucketBatchSampler, num_workers: int | None = None
) -> BucketLoader:
    """DataLoader over `dataset` with bucket batches from `sampler` (num_workers defaults to the config's)."""
    workers = dataset.cfg.num_workers if num_workers is None else num_workers
    # Its own generator: creating an iterator must not consume the global RNG (exact resume).
    # (It only seeds the workers' RNGs, which no per-sample draw uses: see SampleKey.)
    kwargs: dict[str, Any] = {
        "pin_memory": torch.cuda.is_available(),
        "generator": torch.Generator().manual_seed(dataset.cfg.seed),
    }
    if workers > 0:
        kwargs.update(prefetch_factor=2, persistent_workers=False)
    return BucketLoader(dataset, sampler, workers, **kwargs)

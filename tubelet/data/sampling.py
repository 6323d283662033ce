"""Per-sample random draws: `SampleKey` (index, epoch, seed) and `sample_rng`, the generator of one
kind of draw (DRAW_*) for a key. Draws are pure functions of the key, never of a process's RNG
stream, so which process or loader worker produces a sample does not change it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class SampleKey(NamedTuple):
    """What a batch sampler asks a dataset for: sample `index` (its index in the dataset, the same
    on every process) as drawn in `epoch` of a run seeded `seed`.

    Every random choice made for the sample (caption, start frame, replacement of an unreadable
    file) is a function of the key alone (`sample_rng`), so the sample does not depend on the
    process, the loader worker or the order in which samples are produced.
    """

    # a field named `index` shadows tuple.index; mypy rejects that, Python (and this API) do not
    index: int  # type: ignore[assignment]
    epoch: int = 0
    seed: int = 0


# Independent streams of one key: adding or removing one kind of draw never shifts another.
DRAW_CAPTION, DRAW_START, DRAW_REPLACEMENT = 0, 1, 2


def sample_rng(key: SampleKey, what: int, loaded: int | None = None) -> np.random.Generator:
    """The generator of draw `what` (DRAW_*) for `key`: ``np.random.default_rng([seed, epoch,
    index, what, loaded])``, a pure function of its arguments. `loaded` is the sample actually
    decoded (`key.index`, or the sample replacing it when it is unreadable)."""
    loaded = key.index if loaded is None else loaded
    words = [int(key.seed), int(key.epoch), int(key.index), int(what), int(loaded)]
    return np.random.default_rng([w % 2**64 for w in words])  # SeedSequence takes non-negative ints


def as_key(index: int | SampleKey, seed: int) -> SampleKey:
    """`index` as a SampleKey; a plain index is epoch 0 of `seed`."""
    if isinstance(index, SampleKey):
        return index
    if isinstance(index, (tuple, list)):  # a SampleKey that lost its class (e.g. default collation)
        return SampleKey(*(int(v) for v in index))
    return SampleKey(int(index), 0, seed)

"""Folder datasets: captions, buckets, crops, frame-rate resampling, corrupt files, the batch
sampler (determinism, ranks, resume), per-sample draws that do not depend on the process, and
`tubelet data check`. Tiny media made here."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tubelet import media
from tubelet.cli import data_check  # noqa: F401  (registers `data check`)
from tubelet.cli.apps import app
from tubelet.config import config_from_dict, config_to_dict
from tubelet.data.dataset import (
    Bucket,
    BucketBatchSampler,
    DataConfig,
    SampleKey,
    VideoDataset,
    check_dataset,
    choose_bucket,
    collate,
    frames_available,
    make_loader,
    read_captions,
    source_indices,
)
from tubelet.errors import ConfigError, DataError

BUCKETS = [Bucket(5, 32, 32, 2), Bucket(5, 32, 64, 2), Bucket(1, 32, 32, 2)]
RED, GREEN, BLUE = (230, 20, 20), (20, 230, 20), (20, 20, 230)


def _cfg(**kw) -> DataConfig:
    base = {"fps": 8.0, "buckets": list(BUCKETS), "random_start": False, "num_workers": 0}
    base.update(kw)
    return DataConfig(**base)


def _index_clip(t: int, h: int, w: int) -> np.ndarray:
    """Frame k is a flat grey of level 10 + 12 k (the frame index, readable after lossy coding)."""
    return np.stack([np.full((h, w, 3), 10 + 12 * k, np.uint8) for k in range(t)])


def _thirds(t: int, h: int, w: int, axis: int = 1) -> np.ndarray:
    """Red / green / blue thirds along width (axis=1) or height (axis=0)."""
    f = np.zeros((t, h, w, 3), np.uint8)
    n = (w if axis == 1 else h) // 3
    for i, c in enumerate((RED, GREEN, BLUE)):
        sl = slice(i * n, (i + 1) * n if i < 2 else None)
        if axis == 1:
            f[:, :, sl] = c
        else:
            f[:, sl, :] = c
    return f


def _level(video: torch.Tensor) -> np.ndarray:
    """Mean grey level (0..255) of each frame of a (3, F, H, W) [-1, 1] clip."""
    return ((video + 1) * 127.5).mean(dim=(0, 2, 3)).numpy()


CAPTIONS = {
    "clips/sq_0.mp4": ["a grey square clip", "一个灰色的方形视频"],
    "clips/sq_1.mp4": ["second square"],
    "clips/sq_2.mkv": ["third square, matroska"],
    "clips/wide_0.mp4": ["a wide clip"],
    "clips/wide_1.mp4": ["another wide clip"],
    "clips/thirds.mp4": ["red green blue thirds"],
    "clips/short.mp4": ["too short for the video bucket"],
    "stills/img_0.png": ["a landscape image"],
    "stills/tall.jpg": ["a portrait image"],
}


def _make_folder(root: Path, fmt: str = "jsonl", extra: dict[str, list[str]] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "clips").mkdir(exist_ok=True)
    (root / "stills").mkdir(exist_ok=True)
    for name in ("sq_0.mp4", "sq_1.mp4", "sq_2.mkv"):
        media.write_video(root / "clips" / name, _index_clip(20, 48, 48), 24, sidecar=False)
    for name in ("wide_0.mp4", "wide_1.mp4"):
        media.write_video(root / "clips" / name, _index_clip(16, 48, 96), 8, sidecar=False)
    media.write_video(root / "clips" / "thirds.mp4", _thirds(8, 32, 96), 8, sidecar=False)
    media.write_video(root / "clips" / "short.mp4", _index_clip(4, 48, 48), 8, sidecar=False)
    Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(root / "stills" / "img_0.png")
    Image.fromarray(_thirds(1, 60, 30, axis=0)[0]).save(root / "stills" / "tall.jpg", quality=95)
    caps = dict(CAPTIONS)
    caps.update(extra or {})
    rows = [(video, c) for video, cs in caps.items() for c in cs]
    if fmt == "jsonl":
        lines = [
            json.dumps({"video": v, "caption": c, "source": "test"}, ensure_ascii=False) for v, c in rows
        ]
        (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        import csv

        with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["video", "caption", "notes"])
            for v, c in rows:
                w.writerow([v, c, "x, y"])
    return root


def _add_corrupt(root: Path) -> list[str]:
    """Truncated mp4 (index intact, tail gone), text renamed .mp4, zero bytes, a missing file."""
    noise = np.random.default_rng(0).integers(0, 256, (20, 48, 48, 3), dtype=np.uint8)
    full = media.write_video(root / "tmp_noise.mp4", noise, 24, sidecar=False)
    data = full.read_bytes()
    full.unlink()
    (root / "clips" / "truncated.mp4").write_bytes(data[: len(data) * 2 // 3])
    (root / "clips" / "notes.mp4").write_text("this is a text file renamed to .mp4\n")
    (root / "clips" / "empty.mp4").write_bytes(b"")
    names = ["clips/truncated.mp4", "clips/notes.mp4", "clips/empty.mp4", "clips/missing.mp4"]
    with open(root / "captions.jsonl", "a", encoding="utf-8") as f:
        for n in names:
            f.write(json.dumps({"video": n, "caption": "broken"}) + "\n")
    return names


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory) -> Path:
    return _make_folder(tmp_path_factory.mktemp("clean") / "data")


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory) -> Path:
    root = _make_folder(tmp_path_factory.mktemp("corrupt") / "data")
    _add_corrupt(root)
    return root


def _bucket_by_name(ds: VideoDataset) -> dict[str, int]:
    return {Path(s.path).name: s.bucket for s in ds.samples}


# ------------------------------------------------------------------------------------ pure parts


def test_frame_arithmetic_and_bucket_choice():
    assert frames_available(20, 24, 8) == 7  # source frames 0, 3, ..., 18
    assert source_indices(4, 5, 24, 8) == [4, 7, 10, 13, 16]
    assert source_indices(0, 4, 8, 16) == [0, 0, 1, 1]  # slower source: frames repeat
    assert choose_bucket(96, 32, 7, BUCKETS) == 1  # 3:1 is closest to 2:1
    assert choose_bucket(48, 48, 7, BUCKETS) == 0
    assert choose_bucket(48, 48, 4, BUCKETS) == 2  # too short for 5 frames: 1-frame bucket
    assert choose_bucket(48, 48, 4, BUCKETS, videos_as_images=False) is None
    assert choose_bucket(96, 48, 4, BUCKETS) is None  # no 1-frame bucket of its aspect
    assert choose_bucket(200, 10, 1, BUCKETS, is_image=True) == 2  # images: 1-frame buckets only
    two_res = [Bucket(5, 32, 32, 1), Bucket(5, 64, 64, 1)]
    assert choose_bucket(48, 48, 9, two_res) == 0  # 64x64 would upscale
    assert choose_bucket(100, 100, 9, two_res) == 1


def test_config_accepts_bucket_lists_and_rejects_bad_values():
    cfg = config_from_dict(
        DataConfig,
        {"fps": 8, "buckets": [[17, 64, 64, 4], {"frames": 1, "height": 64, "width": 64, "batch_size": 8}]},
    )
    assert cfg.buckets == [Bucket(17, 64, 64, 4), Bucket(1, 64, 64, 8)]
    assert config_from_dict(DataConfig, config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="frames"):
        DataConfig(buckets=[(0, 64, 64, 4)])
    with pytest.raises(ConfigError, match="fps"):
        DataConfig(fps=0)
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict(DataConfig, {"fsp": 8})


# ------------------------------------------------------------------------------------ captions


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_index_buckets_shapes_and_captions(tmp_path, fmt):
    root = _make_folder(tmp_path / "d", fmt)
    ds = VideoDataset(root, _cfg(), progress=False)
    assert _bucket_by_name(ds) == {
        "sq_0.mp4": 0,
        "sq_1.mp4": 0,
        "sq_2.mkv": 0,
        "wide_0.mp4": 1,
        "wide_1.mp4": 1,
        "thirds.mp4": 1,
        "short.mp4": 2,
        "img_0.png": 2,
        "tall.jpg": 2,
    }
    st = ds.stats()
    assert (st["samples"], st["videos"], st["images"], st["caption_lines"]) == (9, 7, 2, 10)
    assert st["per_bucket"] == [3, 3, 3] and st["skipped_unreadable"] == 0 and st["skipped_too_short"] == 0
    for i in range(len(ds)):
        item = ds[i]
        b = BUCKETS[item["bucket"]]
        assert item["video"].shape == (3, b.frames, b.height, b.width)
        assert item["video"].dtype == torch.float32
        assert item["video"].min() >= -1 and item["video"].max() <= 1
        assert item["caption"] in CAPTIONS[str(Path(item["path"]).relative_to(root))]
        assert item["skipped"] == []
    sq0 = next(i for i, s in enumerate(ds.samples) if s.path.endswith("sq_0.mp4"))
    assert ds.samples[sq0].captions == CAPTIONS["clips/sq_0.mp4"]  # two captions, one sample
    assert ds.load(sq0, caption_index=1)["caption"] == "一个灰色的方形视频"


def test_caption_file_errors(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    with pytest.raises(DataError, match=r"no captions file.*captions\.jsonl or captions\.csv"):
        read_captions(root)
    good = json.dumps({"video": "a.mp4", "caption": "x"})
    (root / "captions.jsonl").write_text(f"{good}\n\n{{not json\n")
    with pytest.raises(DataError, match=r"captions\.jsonl:3: not valid JSON"):
        VideoDataset(root, _cfg(), progress=False)
    (root / "captions.jsonl").write_text(f'{good}\n{{"video": "b.mp4", "text": "y"}}\n')
    with pytest.raises(DataError, match=r"captions\.jsonl:2: missing key\(s\) \['caption'\]"):
        read_captions(root)
    (root / "captions.jsonl").write_text('{"video": 3, "caption": "y"}\n')
    with pytest.raises(DataError, match=r"captions\.jsonl:1: 'video' must be a non-empty string"):
        read_captions(root)
    (root / "captions.jsonl").write_text('["a.mp4", "y"]\n')
    with pytest.raises(DataError, match=r"captions\.jsonl:1: expected a JSON object"):
        read_captions(root)
    (root / "captions.jsonl").write_text('{"clip": "a.mp4", "text": "y"}\n')
    assert read_captions(root, video_key="clip", caption_key="text").entries[0].caption == "y"
    (root / "captions.csv").write_text("video,caption\na.mp4,x\n")
    with pytest.raises(DataError, match="found both"):
        read_captions(root)
    (root / "captions.jsonl").unlink()
    (root / "captions.csv").write_text("path,caption\na.mp4,x\n")
    with pytest.raises(DataError, match=r"captions\.csv:1: header lacks column\(s\) \['video'\]"):
        read_captions(root)
    (root / "captions.csv").write_text('video,caption\na.mp4,x\nb.mp4,"y",extra\n')
    with pytest.raises(DataError, match=r"captions\.csv:3: expected 2 columns"):
        read_captions(root)


# ------------------------------------------------------------------------------------ pixels


def test_center_crop_keeps_aspect(clean_dir):
    ds = VideoDataset(clean_dir, _cfg(), progress=False)
    by_name = {Path(s.path).name: i for i, s in enumerate(ds.samples)}
    # 96x32 (3:1) into the 64x32 (2:1) bucket: the centre 64 columns, i.e. 16 red, 32 green, 16 blue
    # (stretching would give about 21 / 22 / 21: columns 19-21 red and 43-45 blue).
    v = ds[by_name["thirds.mp4"]]["video"]  # (3, 5, 32, 64)
    rgb = lambda region: ((region + 1) * 127.5).mean(dim=(1, 2, 3)).numpy()  # noqa: E731
    for cols, colour in (
        ((1, 13), RED),
        ((19, 22), GREEN),
        ((28, 36), GREEN),
        ((42, 45), GREEN),
        ((51, 63), BLUE),
    ):
        np.testing.assert_allclose(rgb(v[..., cols[0] : cols[1]]), colour, atol=25, err_msg=str(cols))
    # A 30x60 portrait image into the 32x32 bucket: its centre 30x30 (rows 15..45: 5 red, 20 green,
    # 5 blue) scaled by 32/30, so rows ~5..27 are green (stretching would make rows 7-10 red).
    t = ds[by_name["tall.jpg"]]["video"]  # (3, 1, 32, 32)
    assert t.shape == (3, 1, 32, 32)
    for rows, colour in (
        ((0, 4), RED),
        ((7, 10), GREEN),
        ((12, 20), GREEN),
        ((22, 25), GREEN),
        ((29, 32), BLUE),
    ):
        np.testing.assert_allclose(rgb(t[:, :, rows[0] : rows[1]]), colour, atol=30, err_msg=str(rows))


def test_fps_resampling_picks_frames(clean_dir):
    ds = VideoDataset(clean_dir, _cfg(), progress=False)
    i = next(i for i, s in enumerate(ds.samples) if s.path.endswith("sq_0.mp4"))  # 24 fps, 20 frames
    np.testing.assert_allclose(_level(ds[i]["video"]), [10 + 12 * k for k in (0, 3, 6, 9, 12)], atol=4)
    np.testing.assert_allclose(
        _level(ds.load(i, start=4)["video"]), [10 + 12 * k for k in (4, 7, 10, 13, 16)], atol=4
    )
    mkv = next(i for i, s in enumerate(ds.samples) if s.path.endswith("sq_2.mkv"))
    np.testing.assert_allclose(
        _level(ds.load(mkv, start=7)["video"]), [10 + 12 * k for k in (7, 10, 13, 16, 19)], atol=4
    )
    # Random starts (one per epoch): always 3 source frames apart, first frame within 0..7 (= 20 - 13).
    rnd = VideoDataset(clean_dir, _cfg(random_start=True), progress=False)
    starts = set()
    for epoch in range(12):
        lv = _level(rnd[SampleKey(i, epoch, 0)]["video"])
        k = (lv - 10) / 12
        np.testing.assert_allclose(np.diff(k), 3, atol=0.4)
        assert -0.4 < k[0] < 7.4
        starts.add(round(k[0]))
    assert len(starts) >= 3
    # Upsampling: an 8 fps clip read at 16 fps repeats each frame twice.
    up = VideoDataset(clean_dir, _cfg(fps=16.0), progress=False)
    w = next(i for i, s in enumerate(up.samples) if s.path.endswith("wide_0.mp4"))
    np.testing.assert_allclose(_level(up[w]["video"]), [10, 10, 22, 22, 34], atol=4)


def test_too_short_clips_are_counted_not_errors(clean_dir):
    ds = VideoDataset(clean_dir, _cfg(videos_as_images=False), progress=False)
    assert "short.mp4" not in _bucket_by_name(ds)
    st = ds.stats()
    assert st["skipped_too_short"] == 1 and st["too_short"][0].endswith("short.mp4")
    assert st["per_bucket"] == [3, 3, 2]
    no_images = VideoDataset(clean_dir, _cfg(buckets=BUCKETS[:2]), progress=False)
    assert no_images.stats()["skipped_too_short"] == 3  # short clip + 2 images: no 1-frame bucket


def test_uncaptioned_files(tmp_path, clean_dir):
    root = shutil.copytree(clean_dir, tmp_path / "d")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "stills" / "extra.png")
    ds = VideoDataset(root, _cfg(), progress=False)
    assert len(ds) == 9 and ds.stats()["uncaptioned"] == 1
    ds = VideoDataset(root, _cfg(include_uncaptioned=True), progress=False)
    i = next(i for i, s in enumerate(ds.samples) if s.path.endswith("extra.png"))
    assert len(ds) == 10 and ds[i]["caption"] == ""
    rep = check_dataset(root, progress=False)
    assert rep.uncaptioned_files == 1 and rep.captioned_files == 9 and "extra.png" in rep.format_table()


# ------------------------------------------------------------------------------------ corrupt data


def test_unreadable_files_skipped_counted_logged_once(tmp_path, corrupt_dir, caplog):
    root = shutil.copytree(corrupt_dir, tmp_path / "d")
    with caplog.at_level(logging.WARNING, logger="tubelet.data"):
        ds = VideoDataset(root, _cfg(seed=3), progress=False)
        # Index time: text, empty and missing files fail to probe; the truncated one probes fine.
        assert set(map(lambda p: Path(p).name, ds.unreadable)) == {"notes.mp4", "empty.mp4", "missing.mp4"}
        assert "plain text" in ds.unreadable[str(root / "clips/notes.mp4")]
        assert "captions.jsonl line 14" in ds.unreadable[str(root / "clips/missing.mp4")]
        assert "truncated.mp4" in _bucket_by_name(ds)
        # A file that goes bad after indexing.
        (root / "clips" / "sq_1.mp4").write_bytes(b"\x00" * 100)
        sampler = BucketBatchSampler(ds, seed=1)
        loader = make_loader(ds, sampler)
        seen = 0
        for _epoch in range(3):
            for batch in loader:
                b = BUCKETS[batch["bucket"]]
                assert batch["video"].shape == (b.batch_size, 3, b.frames, b.height, b.width)
                assert torch.isfinite(batch["video"]).all() and batch["video"].abs().max() <= 1
                assert not any(Path(p).name in ("truncated.mp4", "sq_1.mp4") for p in batch["path"])
                assert len(batch["caption"]) == b.batch_size
                seen += 1
        assert seen == 3 * len(sampler) and len(sampler) == 4
        # The bad samples were in the sampled batches (bucket 0 holds 4 samples, 2 batches).
        st = ds.stats()
        assert st["skipped_unreadable"] == 5
        assert {Path(p).name for p in st["unreadable"]} >= {"truncated.mp4", "sq_1.mp4"}
        for name in ("truncated.mp4", "sq_1.mp4", "notes.mp4"):
            assert sum(name in r.getMessage() for r in caplog.records) == 1, name


def test_worker_processes_report_unreadable_files(tmp_path, clean_dir, caplog):
    root = shutil.copytree(clean_dir, tmp_path / "d")
    ds = VideoDataset(root, _cfg(), progress=False)
    (root / "clips" / "wide_1.mp4").write_text("gone bad")
    sampler = BucketBatchSampler(ds, seed=0)
    loader = make_loader(ds, sampler, num_workers=2)
    with caplog.at_level(logging.WARNING, logger="tubelet.data"):
        batches = list(loader)
    assert len(batches) == 3
    assert all(len(b["path"]) == 2 and not any("wide_1" in p for p in b["path"]) for b in batches)
    assert list(ds.stats()["unreadable"]) == [str(root / "clips" / "wide_1.mp4")]
    assert sum("wide_1.mp4" in r.getMessage() for r in caplog.records) == 1


def test_bucket_with_no_readable_sample_raises(tmp_path, clean_dir):
    root = shutil.copytree(clean_dir, tmp_path / "d")
    ds = VideoDataset(root, _cfg(), progress=False)
    for name in ("wide_0.mp4", "wide_1.mp4", "thirds.mp4"):
        (root / "clips" / name).write_bytes(b"")
    i = ds.bucket_members[1][0]
    with pytest.raises(DataError, match=r"bucket 1.*no readable sample"):
        ds[i]
    assert ds.stats()["skipped_unreadable"] == 3


# ------------------------------------------------------------------------------------ sampler


SAMPLE_BUCKETS = [0] * 13 + [1] * 7 + [2] * 9 + [3] * 1


def _all(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def test_sampler_batches_deterministic_and_bucket_pure():
    s = BucketBatchSampler(SAMPLE_BUCKETS, [2, 3, 4, 1], seed=5)
    assert len(s) == 6 + 2 + 2 + 1
    e0, e1 = _all(s), _all(s)  # iterating again moves to the next epoch
    assert e0 != e1
    assert _all(BucketBatchSampler(SAMPLE_BUCKETS, [2, 3, 4, 1], seed=5)) == e0
    assert _all(BucketBatchSampler(SAMPLE_BUCKETS, [2, 3, 4, 1], seed=6)) != e0
    s2 = BucketBatchSampler(SAMPLE_BUCKETS, [2, 3, 4, 1], seed=5)
    s2.set_epoch(1)
    assert _all(s2) == e1
    for epoch in (e0, e1):
        flat = [i for b in epoch for i in b]
        assert len(flat) == len(set(flat))  # no sample twice in an epoch
        for b in epoch:
            buckets = {SAMPLE_BUCKETS[i] for i in b}
            assert len(buckets) == 1
            assert len(b) == [2, 3, 4, 1][buckets.pop()]  # full batches only
    assert len({SAMPLE_BUCKETS[b[0]] for b in e0}) == 4


def test_sampler_ranks_share_global_batches_disjointly():
    world = 3
    ranks = [
        _all(BucketBatchSampler(SAMPLE_BUCKETS, [2, 1, 1, 1], seed=2, rank=r, world_size=world))
        for r in range(world)
    ]
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == 2 + 2 + 3  # bucket 3 (1 sample) unused
    single = _all(BucketBatchSampler(SAMPLE_BUCKETS, [6, 3, 3, 3], seed=2))
    for step, parts in enumerate(zip(*ranks)):
        ids = [i for p in parts for i in p]
        assert len(ids) == len(set(ids))  # disjoint
        assert len({SAMPLE_BUCKETS[i] for i in ids}) == 1  # same bucket on every rank
        assert all(len(p) == len(parts[0]) for p in parts)
        assert ids == single[step]  # the ranks' shares make up the global batch
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler(SAMPLE_BUCKETS, [1, 1, 1, 1], rank=3, world_size=3)


def test_sampler_resume_gives_the_same_next_batches():
    ref = BucketBatchSampler(SAMPLE_BUCKETS, [2, 3, 4, 1], seed=9)
    stream = _all(ref) + _all(ref) + _all(ref)
    n = len(ref)
    for k in (0, 4, n - 1, n, n + 3):
        s = BucketBatchSampler(SAMPLE_BUCKETS, [2, 3, 4, 1], seed=9)
        got, it = [], iter(s)
        while len(got) < k:
            try:
                got.append(next(it))
            except StopIteration:
                it = iter(s)
        state = json.loads(json.dumps(s.state_dict()))  # survives a checkpoint
        resumed = BucketBatchSampler(SAMPLE_BUCKETS, [2, 3, 4, 1], seed=9)
        resumed.load_state_dict(state)
        after = []
        while len(got) + len(after) < 2 * n + 2:
            after += _all(resumed)
        assert got + after[: 2 * n + 2 - k] == stream[: 2 * n + 2], k


def test_loader_resume_despite_worker_prefetch(clean_dir):
    def paths(ds, state=None, take=None):
        sampler = BucketBatchSampler(ds, seed=4)
        loader = make_loader(ds, sampler, num_workers=2)
        if state is not None:
            loader.load_state_dict(state)
        out, it = [], iter(loader)
        for batch in it:
            out.append(batch["path"])
            if take is not None and len(out) == take:
                break
        return out, loader.state_dict()

    ds = VideoDataset(clean_dir, _cfg(), progress=False)
    full, _ = paths(ds)
    first, state = paths(ds, take=1)  # workers have prefetched more than one batch by now
    assert state["epoch"] == 0 and state["position"] == 1
    rest, end = paths(ds, state)
    assert first + rest == full and len(full) == 3
    assert (end["epoch"], end["position"]) == (1, 0)
    # Breaking out of a loader and iterating it again continues after the last batch handed out.
    sampler = BucketBatchSampler(ds, seed=4)
    loader = make_loader(ds, sampler, num_workers=2)
    it = iter(loader)
    got = [next(it)["path"]]
    del it
    got += [b["path"] for b in loader]
    assert got == full
    assert [b["path"] for b in loader] == paths(ds, {"epoch": 1, "position": 0})[0]


# ------------------------------------------------------------------------------------ per-sample draws
# Which caption a sample gets, where its clip starts and which sample replaces an unreadable one are
# functions of (seed, epoch, sample index) only: the same in any process, worker or rank.


@pytest.fixture(scope="module")
def bilingual_dir(tmp_path_factory) -> Path:
    """The clean folder with an English and a Chinese caption for every file."""
    extra = {v: [cs[0], f"中文：{cs[0]}"] for v, cs in CAPTIONS.items()}
    return _make_folder(tmp_path_factory.mktemp("bilingual") / "data", extra=extra)


_DRAWS_SCRIPT = """
import json, sys
from tubelet.data.dataset import DataConfig, SampleKey, VideoDataset
cfg = DataConfig(**json.loads(sys.argv[2]))
ds = VideoDataset(sys.argv[1], cfg, progress=False)
print(json.dumps([ds.draws(SampleKey(*k)) for k in json.loads(sys.argv[3])]))
"""


class _Draws(torch.utils.data.Dataset):
    def __init__(self, ds: VideoDataset, keys: list[SampleKey]) -> None:
        self.ds, self.keys = ds, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, j: int) -> dict[str, int]:
        return self.ds.draws(self.keys[j])


def test_per_sample_draws_are_a_function_of_seed_epoch_and_index(bilingual_dir):
    cfg = _cfg(random_start=True)
    ds = VideoDataset(bilingual_dir, cfg, progress=False)
    keys = [SampleKey(i, epoch, 7) for i in range(len(ds)) for epoch in range(6)]
    here = [ds.draws(k) for k in keys]
    # Not from the global RNGs: reseeding them (or drawing from them) changes nothing.
    torch.manual_seed(123)
    np.random.seed(5)
    torch.rand(10)
    assert [ds.draws(k) for k in reversed(keys)] == here[::-1]
    # A loader worker process, and a fresh interpreter with its own dataset object, draw the same.
    loader = torch.utils.data.DataLoader(_Draws(ds, keys), batch_size=None, num_workers=1)
    assert [{k: int(v) for k, v in d.items()} for d in loader] == here
    cfg_json = json.dumps(config_to_dict(cfg))
    out = subprocess.run(
        [sys.executable, "-c", _DRAWS_SCRIPT, str(bilingual_dir), cfg_json, json.dumps(keys)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout) == here
    # The draws are random: both languages and several start frames turn up; the seed matters.
    sq0 = next(i for i, s in enumerate(ds.samples) if s.path.endswith("sq_0.mp4"))
    mine = [d for k, d in zip(keys, here) if k.index == sq0]
    assert {d["caption_index"] for d in mine} == {0, 1}
    assert len({d["start"] for d in mine}) >= 3 and all(0 <= d["start"] <= 7 for d in mine)
    assert [ds.draws(k._replace(seed=8)) for k in keys] != here
    img = next(i for i, s in enumerate(ds.samples) if s.kind == "image")
    assert {ds.draws(SampleKey(img, e, 7))["start"] for e in range(6)} == {0}
    # The item is what the draws say; a plain index is epoch 0 of cfg.seed.
    key = SampleKey(sq0, 3, 7)
    d, item = ds.draws(key), ds[key]
    assert item["caption"] == ds.samples[sq0].captions[d["caption_index"]]
    loaded = ds.load(sq0, start=d["start"], caption_index=d["caption_index"])
    assert torch.equal(item["video"], loaded["video"])
    assert torch.equal(ds[sq0]["video"], ds[SampleKey(sq0, 0, cfg.seed)]["video"])


def _take(loader, n: int) -> list[tuple[str, str, torch.Tensor]]:
    out, it = [], iter(loader)
    while len(out) < n:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        out.append(list(zip(batch["path"], batch["caption"], batch["video"])))
    return out


def test_ranks_load_exactly_the_samples_of_one_process(bilingual_dir):
    """2 ranks x 1 sample == 1 process x 2 samples: the same global batches, and each sample with the
    same caption and start frame, whichever rank (and worker) loads it; also after a resume."""

    def loader(per_rank: int, rank: int, world: int, workers: int, state=None):
        buckets = [Bucket(b.frames, b.height, b.width, per_rank) for b in BUCKETS]
        ds = VideoDataset(bilingual_dir, _cfg(random_start=True, buckets=buckets), progress=False)
        sampler = BucketBatchSampler(ds, seed=11, rank=rank, world_size=world)
        out = make_loader(ds, sampler, num_workers=workers)
        if state is not None:
            out.load_state_dict(state)
        return out

    steps = 7  # 3 global batches per epoch: into the third epoch
    single = _take(loader(2, 0, 1, 0), steps)
    torch.manual_seed(1)  # the processes' RNGs differ; nothing per sample is drawn from them
    rank0 = _take(loader(1, 0, 2, 2), steps)
    torch.manual_seed(2)
    rank1 = _take(loader(1, 1, 2, 0), steps)
    captions = set()
    for step, (a, b, both) in enumerate(zip(rank0, rank1, single)):
        assert [x[:2] for x in a + b] == [x[:2] for x in both], step
        assert all(torch.equal(x[2], y[2]) for x, y in zip(a + b, both)), step
        captions |= {x[1] for x in both}
    assert any(c.startswith("中文") for c in captions) and any(not c.startswith("中文") for c in captions)
    # Resuming a rank mid-epoch continues with the same samples, drawn the same.
    first = loader(1, 1, 2, 2)
    head = _take(first, 4)
    rest = _take(loader(1, 1, 2, 2, json.loads(json.dumps(first.state_dict()))), steps - 4)
    for x, y in zip([s for b in head + rest for s in b], [s for b in rank1 for s in b]):
        assert x[:2] == y[:2] and torch.equal(x[2], y[2])


def test_replacement_does_not_depend_on_what_the_process_knows(corrupt_dir):
    """An unreadable sample is replaced by the same sample whether or not this process (or worker)
    already found the file unreadable."""
    fresh = VideoDataset(corrupt_dir, _cfg(random_start=True, seed=3), progress=False)
    known = VideoDataset(corrupt_dir, _cfg(random_start=True, seed=3), progress=False)
    bad = next(i for i, s in enumerate(known.samples) if s.path.endswith("truncated.mp4"))
    known[bad]  # now it knows: the next draws skip decoding that file
    assert bad in known._bad and bad not in fresh._bad
    for epoch in range(4):
        for i in fresh.bucket_members[fresh.samples[bad].bucket]:
            key = SampleKey(i, epoch, 3)
            assert fresh.replacements(key) == known.replacements(key)
            a, b = fresh[key], known[key]
            assert (a["path"], a["caption"]) == (b["path"], b["caption"])
            assert torch.equal(a["video"], b["video"])
            assert not a["path"].endswith("truncated.mp4")
    key = SampleKey(bad, 0, 3)
    assert bad not in fresh.replacements(key) and len(set(fresh.replacements(key))) == 3


def test_collate_rejects_mixed_buckets():
    item = {"video": torch.zeros(3, 1, 2, 2), "caption": "c", "path": "p", "bucket": 0}
    with pytest.raises(ValueError, match="mixes buckets"):
        collate([item, {**item, "bucket": 1}])


# ------------------------------------------------------------------------------------ data check


def test_check_dataset_report(clean_dir, corrupt_dir):
    rep = check_dataset(clean_dir, progress=False)
    assert rep.ok and rep.summary_line() == "all 9 files readable"
    assert (rep.files, rep.videos, rep.images, rep.caption_lines, rep.captioned_files) == (9, 7, 2, 10, 9)
    assert rep.resolutions["48x48"] == 4 and rep.resolutions["96x48"] == 2 and rep.resolutions["40x30"] == 1
    assert rep.frame_rates == {"8": 4, "24": 3}
    assert rep.total_frames == 3 * 20 + 2 * 16 + 8 + 4
    assert abs(rep.total_duration - (3 * 20 / 24 + 2 * 2 + 1 + 0.5)) < 0.05
    assert sum(rep.durations.values()) == 7
    bad = check_dataset(corrupt_dir, progress=False)
    causes = {Path(p).name: c for p, c in bad.unreadable}
    assert set(causes) == {"truncated.mp4", "notes.mp4", "empty.mp4", "missing.mp4"}
    assert "truncated" in causes["truncated.mp4"] and "0 bytes" in causes["empty.mp4"]
    assert "file not found (named at captions.jsonl line 14)" == causes["missing.mp4"]
    assert bad.summary_line() == "4 of 13 files unreadable"


def test_data_check_cli(tmp_path, clean_dir, corrupt_dir):
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "check", str(clean_dir), "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "96x48" in ok.output and ok.output.strip().splitlines()[-1] == "all 9 files readable"
    bad = runner.invoke(app, ["data", "check", str(corrupt_dir), "--no-progress"])
    assert bad.exit_code == 1
    assert "4 of 13 files unreadable" in bad.output and "plain text" in bad.output
    js = runner.invoke(app, ["data", "check", str(corrupt_dir), "--json", "--no-progress"])
    assert js.exit_code == 1
    report = json.loads(js.stdout)
    assert report["ok"] is False and len(report["unreadable"]) == 4 and report["files"] == 13
    (tmp_path / "empty").mkdir()
    missing = runner.invoke(app, ["data", "check", str(tmp_path / "empty")])
    assert missing.exit_code != 0 and isinstance(missing.exception, DataError)
    assert "no captions file" in str(missing.exception)

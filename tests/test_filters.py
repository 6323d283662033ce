"""`DataConfig.filters`: parsing and the comparison on a captions line's values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tubelet.data.dataset import DataConfig, VideoDataset
from tubelet.data.filters import parse_filter
from tubelet.errors import ConfigError


def test_parse_and_compare() -> None:
    f = parse_filter("  motion>=1.5 ")
    assert (f.key, f.op, f.value, f.text) == ("motion", ">=", 1.5, "motion>=1.5")
    assert f.passes({"motion": 1.5}) and f.passes({"motion": 3}) and not f.passes({"motion": 1.49})
    assert not f.passes({}) and not f.passes({"motion": "fast"}) and not f.passes({"motion": float("nan")})
    assert not f.passes({"motion": True})  # a boolean is not a score
    g = parse_filter('source != "raw/ads.mp4"')
    assert (
        g.value == "raw/ads.mp4"
        and g.passes({"source": "raw/a.mp4"})
        and not g.passes({"source": "raw/ads.mp4"})
    )
    assert parse_filter("width == 640").passes({"width": 640})


@pytest.mark.parametrize(
    "text, message",
    [
        ("motion", "is not KEY OP VALUE"),
        ("motion => 1", "is not KEY OP VALUE"),
        ("motion > fast", "which is not a number"),
        ("motion > nan", "not nan"),
        (3, "expected a string"),
    ],
)
def test_bad_filters_are_config_errors(text: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(filters=[text])  # type: ignore[list-item]


def test_filters_in_a_dataset(tmp_path: Path) -> None:
    import numpy as np

    from tubelet.media import write_video

    lines = []
    for i, motion in enumerate([0.1, 2.0, 5.0]):
        write_video(tmp_path / f"c{i}.mp4", np.full((4, 16, 16, 3), 40 * i, np.uint8), 8.0, sidecar=False)
        lines.append({"video": f"c{i}.mp4", "caption": f"clip {i}", "motion": motion})
    lines.append({"video": "c2.mp4", "caption": "clip 2, no score"})  # a second line of c2, fails
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = DataConfig(buckets=[(4, 16, 16, 1)], filters=["motion >= 1", "motion < 4"], random_start=False)
    ds = VideoDataset(tmp_path, cfg, progress=False)
    assert [Path(s.path).name for s in ds.samples] == ["c1.mp4"]
    assert ds.filtered_out == {"motion >= 1": 2, "motion < 4": 1}
    assert ds.uncaptioned == []  # filtered files are not "uncaptioned"
    assert "3 captions lines filtered out" in ds.summary()
    # csv columns are read as numbers
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "captions.csv").write_text("video,caption,motion\nc0.mp4,a,0.1\nc1.mp4,b,2\n")
    ds = VideoDataset(tmp_path, DataConfig(buckets=[(4, 16, 16, 1)], filters=["motion > 1"]), progress=False)
    assert [Path(s.path).name for s in ds.samples] == ["c1.mp4"]

"""Box control: the track format (parse, validate, interpolate, errors), the zero-gate equivalence of
the box adapter, its save/load, and boxes through the pipeline and the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tubelet.boxes import BoxError, draw_boxes, parse_boxes, parse_inline_box, track_arrays, tracks_to_dict
from tubelet.diffusion.cond import Boxes, Cond
from tubelet.models.box_adapter import BoxAdapter, BoxAdapterConfig, BoxedDiT
from tubelet.models.dit import DIT_PRESETS, VideoDiT

TRACK = {
    "object": 0,
    "keyframes": [
        {"frame": 0, "x0": 0.1, "y0": 0.4, "x1": 0.3, "y1": 0.6},
        {"frame": 10, "x0": 0.6, "y0": 0.4, "x1": 0.8, "y1": 0.6},
    ],
}


# ------------------------------------------------------------------------------------------- format


def test_tracks_parse_interpolate_and_round_trip() -> None:
    (t,) = parse_boxes({"tracks": [TRACK]})
    assert t.hard and t.first_frame == 0 and t.last_frame == 10
    assert t.box_at(5) == pytest.approx((0.35, 0.4, 0.55, 0.6))
    assert t.box_at(11) is None  # the track ends: the object is free afterwards
    assert parse_boxes(tracks_to_dict([t])) == [t]
    inline = parse_inline_box("0: 0:0.1,0.4,0.3,0.6 10:0.6,0.4,0.8,0.6")
    assert parse_boxes([inline]) == [t]
    soft = parse_boxes([parse_inline_box("red circle soft: 3:0,0,0.5,1")])[0]
    assert soft.object == "red circle" and soft.mode == "soft" and soft.box_at(2) is None
    boxes, present, hard = track_arrays([t, soft], [0, 3, 5, 10, 12])
    assert present.tolist() == [[True, True, True, True, False], [False, True, False, False, False]]
    assert hard.tolist() == [True, False] and boxes.shape == (2, 5, 4)
    assert boxes[0, 2].tolist() == pytest.approx([0.35, 0.4, 0.55, 0.6])


@pytest.mark.parametrize(
    "tracks,message",
    [
        ([{**TRACK, "keyframes": [{"frame": 0, "x0": -0.1, "y0": 0, "x1": 0.5, "y1": 1}]}], r"track 0 keyframe 0\.x0: -0\.1 is outside \[0, 1\]"),
        ([{**TRACK, "keyframes": [{"frame": 0, "x0": 0.5, "y0": 0, "x1": 0.5, "y1": 1}]}], r"x1=0\.5 must be greater than x0=0\.5"),
        ([{**TRACK, "keyframes": [[4, 0, 0, 1, 1], [2, 0, 0, 1, 1]]}], r"keyframe 1: frame 2 is not after frame 4"),
        ([{**TRACK, "keyframes": [{"frame": 0, "x0": float("nan"), "y0": 0, "x1": 1, "y1": 1}]}], r"x0: expected a number"),
        ([{**TRACK, "keyframes": []}], r"'keyframes' must be a non-empty list"),
        ([{**TRACK, "mode": "firm"}], r"mode must be 'hard' or 'soft', got 'firm'"),
        ([{**TRACK, "object": -1}], r"'object' must be an object index >= 0 or a phrase"),
        ([{**TRACK, "speed": 2}], r"unknown key\(s\) \['speed'\]"),
        ([TRACK, TRACK], r"track 1: object 0 already has a track \(boxes: track 0\)"),
        ({"tracks": [TRACK], "extra": 1}, r"unknown key\(s\) \['extra'\]"),
        ("boxes", r"expected a list of tracks"),
    ],
)  # fmt: skip
def test_bad_tracks_name_the_track_and_the_value(tracks: object, message: str) -> None:
    with pytest.raises(BoxError, match=message):
        parse_boxes(tracks)


def test_inline_errors_and_clip_checks() -> None:
    with pytest.raises(BoxError, match=r"--box 2: keyframe '0:0\.1,0\.4' is not FRAME:x0,y0,x1,y1"):
        parse_inline_box("0: 0:0.1,0.4", 2)
    with pytest.raises(BoxError, match="expected 'OBJECT: FRAME"):
        parse_inline_box("no colon here")
    (t,) = parse_boxes([TRACK])
    with pytest.raises(BoxError, match=r"keyframe at frame 10 is beyond the clip \(frames 0\.\.7\)"):
        t.check(num_frames=8)
    with pytest.raises(BoxError, match=r"binds to object 0, but the prompt names 0 object"):
        t.check(num_objects=0)


def test_draw_boxes_outlines_hard_solid_and_soft_dashed() -> None:
    frames = np.zeros((11, 20, 20, 3), np.uint8)
    hard, soft = parse_boxes([TRACK, {**TRACK, "object": 1, "mode": "soft"}])
    drawn = draw_boxes(frames, [hard])
    assert drawn[0].any() and drawn[10].any() and not frames.any()  # a copy
    lit = drawn[0].any(-1)
    ys, xs = np.nonzero(lit)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 6, 8, 12)  # the box of frame 0 on 20 x 20
    assert not lit[9:12, 3:6].any()  # an outline, not a filled box
    dashed = draw_boxes(frames, [soft])[0].any(-1)
    assert 0 < dashed.sum() < lit.sum()


# ------------------------------------------------------------------------------------------- model


def _tiny(patch: tuple[int, int, int] = (1, 2, 2)) -> VideoDiT:
    torch.manual_seed(0)
    dit = VideoDiT(dataclasses.replace(DIT_PRESETS["tiny"], patch_size=patch)).eval()
    with torch.no_grad():  # a trained-looking base (the init zeroes the output projection)
        for p in dit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return dit


def _boxes(batch: int, frames: int) -> Boxes:
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(batch, 2, frames, 4, generator=g).sort(-1).values
    return Boxes(
        xy, torch.ones(batch, 2, frames, dtype=torch.bool), torch.tensor([[True, False]] * batch),
        torch.tensor([[0, 1]] * batch),
    )  # fmt: skip


DESIGNS = {"layout": {}, "attention": {"layout": False, "attention": True}, "both": {"attention": True}}


@pytest.mark.parametrize("design", list(DESIGNS))
@pytest.mark.parametrize("patch", [(1, 2, 2), (4, 2, 2)], ids=["wan-layout", "tubelets-of-4"])
def test_zero_gate_adapter_leaves_the_base_model_unchanged(patch: tuple[int, int, int], design: str) -> None:
    dit = _tiny(patch)
    model = BoxedDiT(dit, BoxAdapter(BoxAdapterConfig.for_dit(dit.config, **DESIGNS[design]))).eval()
    x = torch.randn(2, dit.config.in_channels, 8, 8, 8)
    t, ctx = torch.tensor([700.0, 200.0]), torch.randn(2, 5, dit.config.text_dim)
    with torch.no_grad():
        base = dit(x, t, Cond(context=ctx))
        assert torch.equal(model(x, t, Cond(context=ctx)), base)  # no boxes: the DiT itself
        assert torch.equal(model(x, t, Cond(context=ctx, boxes=_boxes(2, 8))), base)  # gate 0: unchanged
        for layer in model.adapter.layers:
            layer.gate.fill_(0.3)
        if model.adapter.layout is not None:
            for proj in model.adapter.layout.proj:
                proj.weight.normal_(std=0.05)
        moved = model(x, t, Cond(context=ctx, boxes=_boxes(2, 8)))
    assert (moved - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="has no box or image-embedding conditioning"):
        dit(x, t, Cond(context=ctx, boxes=_boxes(2, 8)))


@pytest.mark.parametrize("design", list(DESIGNS))
def test_adapter_trains_with_the_base_frozen(design: str) -> None:
    dit = _tiny()
    model = BoxedDiT(dit, BoxAdapter(BoxAdapterConfig.for_dit(dit.config, **DESIGNS[design])))
    dit.requires_grad_(False)
    x = torch.randn(2, dit.config.in_channels, 4, 8, 8)
    cond = Cond(context=torch.randn(2, 5, dit.config.text_dim), boxes=_boxes(2, 4))
    model(x, torch.tensor([500.0, 500.0]), cond).square().mean().backward()
    grads = {n: p.grad for n, p in model.adapter.named_parameters()}
    assert grads and all(g is not None for g in grads.values())
    if model.adapter.layers:
        assert grads["layers.0.gate"].abs().sum() > 0  # the gate opens from 0
    if model.adapter.layout is not None:
        assert grads["layout.proj.0.weight"].abs().sum() > 0  # the zero projections open
    assert all(p.grad is None for p in dit.parameters())


def test_box_coverage_is_the_exact_share_of_each_cell() -> None:
    from tubelet.models.box_adapter import box_coverage

    # (x0, y0, x1, y1) = (0.25, 0.5, 0.625, 1.0) on a 4 x 8 (H x W) grid; the second frame absent
    c = torch.tensor([[[[0.25, 0.5, 0.625, 1.0], [0.0, 0.0, 1.0, 1.0]]]])
    cover = box_coverage(Boxes(c, torch.tensor([[[True, False]]]), torch.ones(1, 1, dtype=torch.bool),
                               torch.zeros(1, 1, dtype=torch.long)), 4, 8)  # fmt: skip
    assert cover.shape == (1, 1, 2, 4, 8)
    want = torch.zeros(4, 8)
    want[2:, 2:5] = 1.0  # columns 2..4 cover x in [0.25, 0.625], rows 2..3 cover y in [0.5, 1]
    assert torch.allclose(cover[0, 0, 0], want)
    assert not cover[0, 0, 1].any()  # absent: no coverage
    # a box inside one cell: the share of that cell, and the area is kept
    c = torch.tensor([[[[0.3, 0.3, 0.35, 0.4]]]])
    cover = box_coverage(Boxes(c, torch.ones(1, 1, 1, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool),
                               torch.zeros(1, 1, dtype=torch.long)), 10, 10)  # fmt: skip
    assert torch.isclose(cover.sum() / 100, torch.tensor(0.05 * 0.1))
    assert cover[0, 0, 0, 3, 3] == cover.max()


def test_boxes_batch_with_guidance_and_pad_tracks() -> None:
    a, b = _boxes(1, 4), Boxes(torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, dtype=torch.bool),
                               torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.long))  # fmt: skip
    cat = Cond.cat([Cond(context=torch.randn(1, 3, 8), boxes=a), Cond(context=torch.randn(1, 5, 8), boxes=b)])
    assert cat.boxes is not None and cat.boxes.boxes.shape == (2, 2, 4, 4)
    assert not cat.boxes.present[1, 1].any()  # the padded track is absent
    with pytest.raises(ValueError, match="boxes are set on some"):
        Cond.cat([Cond(context=torch.randn(1, 3, 8), boxes=a), Cond(context=torch.randn(1, 3, 8))])


def test_adapter_must_fit_its_dit() -> None:
    from tubelet.errors import ConfigError

    dit = _tiny()
    other = BoxAdapterConfig.for_dit(dataclasses.replace(dit.config, num_layers=3))
    with pytest.raises(ConfigError, match="does not fit the DiT"):
        BoxedDiT(dit, BoxAdapter(other))


# ------------------------------------------------------------------------------------------- pipeline


def test_pipeline_with_an_adapter_saves_loads_and_follows_the_request(box_model: Path) -> None:
    from tubelet.pipelines import GenerationRequest, load_pipeline

    assert (box_model / "box_adapter" / "config.json").is_file()
    assert (box_model / "box_adapter" / "model.safetensors").is_file()
    pipe = load_pipeline(box_model)
    assert pipe.has_box_control and not load_pipeline().has_box_control
    prompt = "a red circle moving right"
    boxes = {"tracks": [{**TRACK, "object": "red circle"}]}
    plain = load_pipeline()(prompt, seed=2, num_inference_steps=4, progress=False)
    r = pipe.generate(GenerationRequest(prompt, seed=2, num_inference_steps=4, boxes=boxes), progress=False)
    assert np.array_equal(r.frames, plain.frames)  # an untrained adapter changes nothing
    assert r.metadata["boxes"]["tracks"][0]["object"] == 0  # bound to the prompt's object 0
    assert r.metadata["request"]["boxes"] == boxes
    # loading the saved adapter gives the same weights
    sd = pipe.transformer.adapter.state_dict()
    again = BoxAdapter.from_pretrained(box_model / "box_adapter").state_dict()
    assert sd.keys() == again.keys() and all(torch.equal(sd[k], again[k]) for k in sd)


@pytest.mark.parametrize(
    "tracks,message",
    [
        ([{**TRACK, "object": 1}], r"binds to object 1, but the prompt names 1 object\(s\): \['red circle'\]"),
        ([{**TRACK, "object": "blue square"}], r"'blue square' names no object of the prompt"),
        ([{**TRACK, "keyframes": [[20, 0, 0, 1, 1]]}], r"keyframe at frame 20 is beyond the clip \(frames 0\.\.15\)"),
        ([TRACK, {**TRACK, "object": "red circle"}], r"object 0 already has a track"),
    ],
)  # fmt: skip
def test_pipeline_box_errors(box_model: Path, tracks: list[dict[str, object]], message: str) -> None:
    from tubelet.pipelines import load_pipeline

    pipe = load_pipeline(box_model)
    with pytest.raises(BoxError, match=message):
        pipe("a red circle moving right", boxes=tracks, num_inference_steps=2, progress=False)


def test_cli_boxes(box_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tubelet.cli import main

    out = tmp_path / "clip.mp4"
    args = ["generate", "a red circle moving right", "--steps", "2", "--no-progress", "--out", str(out)]
    with pytest.raises(SystemExit) as e:  # the embedded model has no box control
        main([*args, "--box", "0: 0:0.1,0.4,0.3,0.6"])
    assert e.value.code == 1 and "this model has no box control" in capsys.readouterr().err
    assert not out.exists()
    file = tmp_path / "boxes.json"
    file.write_text(json.dumps({"tracks": [TRACK]}))
    with pytest.raises(SystemExit) as e:  # the prompt names one object: track 1 binds to nothing
        main([*args, "--model", str(box_model), "--boxes", str(file), "--box", "1 soft: 0:0,0,0.5,1"])
    assert e.value.code == 1 and "binds to object 1" in capsys.readouterr().err and not out.exists()
    file.write_text("{broken")
    with pytest.raises(SystemExit) as e:
        main([*args, "--model", str(box_model), "--boxes", str(file)])
    assert e.value.code == 1 and "boxes.json: not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*args, "--draw-boxes"])
    assert e.value.code == 1 and "--draw-boxes needs --boxes or --box" in capsys.readouterr().err


def test_cli_draw_boxes_writes_a_preview(
    box_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tubelet.cli import main
    from tubelet.media import read_metadata, read_video

    out = tmp_path / "clip.mp4"
    with pytest.raises(SystemExit) as e:
        main(["generate", "a red circle moving right", "--model", str(box_model), "--steps", "2", "--no-progress",
              "--box", "red circle: 0:0.1,0.4,0.3,0.6 15:0.6,0.4,0.8,0.6", "--draw-boxes", "--out", str(out)])  # fmt: skip
    assert e.value.code == 0
    preview = tmp_path / "clip.boxes.mp4"
    assert out.is_file() and preview.is_file()
    clip, drawn = read_video(out).frames, read_video(preview).frames
    assert clip.shape == drawn.shape and np.abs(clip.astype(int) - drawn.astype(int)).max() > 100
    assert read_metadata(out)["boxes"]["tracks"][0]["object"] == 0


# ------------------------------------------------------------------------------------------- data + training


@pytest.fixture(scope="module")
def box_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tubelet.recipes.shapes import write_dataset

    return write_dataset(
        tmp_path_factory.mktemp("boxdata") / "data", 8, seed=0, frames=5, size=16, progress=False
    )


def test_shapes_boxes_are_the_objects_exact_extent(box_data: Path) -> None:
    import json

    from tubelet.recipes.shapes.render import make_clip, object_coverage, scene_boxes

    line = json.loads((box_data / "captions.jsonl").read_text().splitlines()[0])
    tracks = parse_boxes(line["boxes"])
    assert len(tracks) >= 1 and all(t.hard for t in tracks)
    clip = make_clip((3, 5), frames=9, size=64)
    cover = object_coverage(clip.scene, frames=9, size=64)  # (N, T, H, W)
    for i, track in enumerate(parse_boxes(scene_boxes(clip.scene, frames=9, size=64))):
        for t in (0, 4, 8):
            ys, xs = np.nonzero(cover[i, t] > 0.5)
            x0, y0, x1, y1 = (v * 64 for v in track.box_at(t))
            assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1
            assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1


def test_dataset_items_carry_boxes_in_the_cropped_frame(box_data: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from tubelet.data.dataset import VideoDataset
    from tubelet.data.loader import collate
    from tubelet.train.config import resolve_train_config

    cfg = resolve_train_config("tiny").data
    ds = VideoDataset(box_data, cfg, progress=False)
    item = ds[0]
    assert item["boxes"]["boxes"].shape[1:] == (5, 4) and item["boxes"]["present"].all()
    batch = collate([item, {**ds[1], "boxes": None}])
    assert batch["boxes"]["boxes"].shape[0] == 2 and not batch["boxes"]["present"][1].any()
    # a wide source cropped to a square bucket: x coordinates are re-expressed in the crop
    from tubelet.data.buckets import clip_boxes

    (t,) = parse_boxes([{"object": 0, "keyframes": [[0, 0.25, 0.2, 0.5, 0.6]]}])
    arr = clip_boxes([t], [0.0], (100, 200), (16, 16))  # crop: columns 50..150 of 200
    assert arr["boxes"][0, 0].tolist() == pytest.approx([0.0, 0.2, 0.5, 0.6])
    # a malformed boxes field is an error naming the line
    bad = tmp_path / "bad"
    shutil.copytree(box_data, bad)
    line = json.loads((bad / "captions.jsonl").read_text().splitlines()[0])
    line["boxes"] = {"tracks": [{"object": 0, "keyframes": [[0, 0.5, 0.5, 0.2, 0.9]]}]}
    (bad / "captions.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(
        BoxError, match=r"captions\.jsonl:1: boxes: track 0 keyframe 0: x1=0\.2 must be greater"
    ):
        VideoDataset(bad, cfg, progress=False)


def test_box_adapter_trains_on_a_frozen_base_and_generates_with_boxes(box_data: Path, tmp_path: Path) -> None:
    from tubelet.errors import ConfigError
    from tubelet.models.hub import load_safetensors
    from tubelet.pipelines import load_pipeline
    from tubelet.train.config import resolve_train_config
    from tubelet.train.trainer import train

    base = tmp_path / "base"
    train(
        resolve_train_config("tiny", overrides={"max_steps": 2, "save_every": 0}),
        box_data,
        base,
        progress=False,
    )
    with pytest.raises(ConfigError, match=r"boxes\.freeze_base trains the box adapter only"):
        train(resolve_train_config("tiny", overrides={"boxes": {}}), box_data, tmp_path / "x", progress=False)
    overrides = {
        "max_steps": 3,
        "save_every": 0,
        "init_from": str(base / "model"),
        "boxes": {"p_drop_all": 0.0},
    }
    run = tmp_path / "boxes"
    train(resolve_train_config("tiny", overrides=overrides), box_data, run, progress=False)
    for sub in ("transformer", "text_encoder"):  # the base is untouched
        a = load_safetensors(base / "model" / sub / "model.safetensors")
        b = load_safetensors(run / "model" / sub / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    adapter = load_safetensors(run / "model" / "box_adapter" / "model.safetensors")
    assert adapter["layout.proj.0.weight"].abs().max() > 0  # the zero projections opened
    # `tubelet export` of a checkpoint (trainable state only) rebuilds the frozen base from init_from
    from tubelet.train.trainer import export_checkpoint

    out = export_checkpoint(run, tmp_path / "exported")
    for sub in ("transformer", "box_adapter"):
        a = load_safetensors(run / "model" / sub / "model.safetensors")
        b = load_safetensors(out / sub / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    pipe = load_pipeline(run / "model")
    assert pipe.has_box_control
    track = {"object": 0, "keyframes": [[0, 0.1, 0.3, 0.4, 0.7], [4, 0.6, 0.3, 0.9, 0.7]]}
    with_boxes = pipe(
        "a red circle moving right", boxes=[track], seed=0, num_inference_steps=2, progress=False
    )
    without = pipe("a red circle moving right", seed=0, num_inference_steps=2, progress=False)
    assert with_boxes.frames.shape == without.frames.shape == (5, 16, 16, 3)
    assert not np.array_equal(with_boxes.frames, without.frames)


def test_caches_keep_the_boxes(box_data: Path, tmp_path: Path) -> None:
    from tubelet.data.cache import build_pixel_cache
    from tubelet.data.dataset import VideoDataset
    from tubelet.train.config import resolve_train_config

    cfg = resolve_train_config("tiny").data
    out = build_pixel_cache(box_data, tmp_path / "cache", data=cfg, progress=False)
    from tubelet.data.cache import LatentCacheDataset

    cached = LatentCacheDataset(out, cfg)
    ds = VideoDataset(box_data, cfg, progress=False)
    for j in range(len(cached)):
        item = cached[j]
        i = next(k for k, s in enumerate(ds.samples) if s.path == item["path"])
        want = ds.boxes_of(i, cached.samples[j]["start"])
        n = len(want["hard"])
        assert (
            torch.equal(item["boxes"]["boxes"][:n], want["boxes"]) and not item["boxes"]["present"][n:].any()
        )


def test_free_motion_scenes_move_as_text_cannot_say_and_their_boxes_follow() -> None:
    from tubelet.recipes.shapes.oracle import _match, analyse_clip
    from tubelet.recipes.shapes.render import make_clip, scene_boxes
    from tubelet.recipes.shapes.scene import Scene, sample_free_scene

    assert make_clip((0, 3)).scene == make_clip((0, 3), free_motion=0.0).scene  # the default stream is kept
    kinds = {"curved": 0, "timing": 0, "crossing": 0, "diagonal": 0}
    ious = []
    for i in range(30):
        clip = make_clip((5, i), frames=16, size=64, free_motion=1.0)
        scene = clip.scene
        assert Scene.from_dict(scene.to_dict()) == scene  # paths and timings round-trip
        objs = scene.objects
        kinds["curved"] += any(o.via is not None for o in objs)
        kinds["timing"] += any(o.timing != "linear" for o in objs)
        starts = [o.position(0)[0] for o in objs]
        ends = [o.position(1)[0] for o in objs]
        if len(objs) == 2 and (starts[0] - starts[1]) * (ends[0] - ends[1]) < 0:
            kinds["crossing"] += 1  # they swapped sides
        for o in objs:
            (x0, y0), (x1, y1) = o.position(0), o.position(1)
            kinds["diagonal"] += abs(x1 - x0) > 0.1 and abs(y1 - y0) > 0.1
            # the caption names the dominant direction of the whole path
            dx, dy = x1 - x0, y1 - y0
            want = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
            assert o.spec.motion == want
        analysis = analyse_clip(clip.frames)
        match = _match(scene.spec, analysis.tracks)
        for t in parse_boxes(scene_boxes(scene, frames=16, size=64)):
            found = analysis.tracks[match[t.object]].boxes if t.object in match else {}
            for f in (0, 7, 15):
                b, g = t.box_at(f), found.get(f)
                if g is None:
                    ious.append(0.0)
                    continue
                ix = max(0.0, min(b[2], g[2]) - max(b[0], g[0]))
                iy = max(0.0, min(b[3], g[3]) - max(b[1], g[1]))
                ious.append(
                    ix * iy / ((b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - ix * iy)
                )
    assert all(v > 0 for v in kinds.values()), kinds
    assert np.median(ious) > 0.95  # crossing objects occlude each other for a few frames
    stop = next(
        o
        for i in range(200)
        for o in sample_free_scene(np.random.default_rng(i)).objects
        if o.timing == "stop_go"
    )
    assert stop.position(0.4) == stop.position(0.6) and stop.position(0.0) != stop.position(1.0)


def test_write_dataset_with_free_motion_records_it(tmp_path: Path) -> None:
    import json

    from tubelet.recipes.shapes import write_dataset

    out = write_dataset(tmp_path / "d", 6, seed=1, frames=8, size=32, progress=False, free_motion=0.5)
    meta = json.loads((out / "shapes.json").read_text())
    assert meta["free_motion"] == 0.5
    scenes = [json.loads(x)["scene"] for x in (out / "scenes.jsonl").read_text().splitlines()]
    assert len(scenes) == 6


@pytest.mark.parametrize("mode", ["joint", "text"])
def test_box_guidance_modes(box_model: Path, mode: str) -> None:
    """joint: the unconditional half of the guidance batch has every track absent (guidance pushes
    towards text and boxes); text: both halves carry the boxes. Recorded in the metadata."""
    import dataclasses

    from tubelet.pipelines import load_pipeline

    pipe = load_pipeline(box_model, device="cpu")
    pipe.config = dataclasses.replace(pipe.config, box_guidance=mode)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[2].boxes))
    boxes = [{"object": 0, "keyframes": [[0, 0.1, 0.1, 0.4, 0.4], [15, 0.6, 0.6, 0.9, 0.9]]}]
    r = pipe("a red circle moving right", seed=1, boxes=boxes, num_inference_steps=2, progress=False)
    assert r.metadata["box_guidance"] == mode
    present = seen[0].present  # (2B, N, F'): conditional rows, then unconditional
    assert present[0].any()
    assert (not present[1].any()) if mode == "joint" else bool((present[1] == present[0]).all())

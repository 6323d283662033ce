"""TextToVideoPipeline: determinism, batches, and every conditioning task's guarantee (tiny random models)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tubelet.errors import ModelLoadError, TubeletError, VideoError
from tubelet.media import Video, read_metadata, write_video
from tubelet.models.dit import DIT_PRESETS, VideoDiT
from tubelet.models.text import BYTE_TEXT_PRESETS, ByteTextEncoder
from tubelet.models.vae import VAE_PRESETS, CausalVideoVAE
from tubelet.pipelines import (
    PipelineConfig,
    TextToVideoPipeline,
    resample_frames,
)

PROMPT = "a red circle moving right"


from conftest import one_thread_impl  # noqa: E402

one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_impl)


def make_pipe(*, vae: bool = True, seed: int = 0, **cfg: object) -> TextToVideoPipeline:
    torch.manual_seed(seed)
    dcfg = DIT_PRESETS["tiny"]
    if not vae:
        dcfg = dataclasses.replace(dcfg, in_channels=3, out_channels=3)
    defaults = {"height": 32, "width": 32, "num_frames": 9, "num_inference_steps": 2, "guidance_scale": 2.0}
    pcfg = PipelineConfig(**{**defaults, **cfg})  # type: ignore[arg-type]
    dit = VideoDiT(dcfg)
    dit.init_weights(zero_head=False)  # a fresh Wan DiT predicts zero velocity; tests need a real one
    return TextToVideoPipeline(
        dit,
        ByteTextEncoder(BYTE_TEXT_PRESETS["tiny"]),
        CausalVideoVAE(VAE_PRESETS["tiny"]) if vae else None,
        pcfg,
    )


@pytest.fixture(scope="module")
def pipe() -> TextToVideoPipeline:
    return make_pipe()


def rand_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random frames (blurred noise), so resizing and the VAE see image-like content."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (t, max(2, h // 4), max(2, w // 4), 3)).astype(np.uint8)
    import cv2

    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in small])


def pixels(pipe: TextToVideoPipeline, frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, h, w, 3) -> (1, 3, T, H, W) at the pipeline's default size, as the pipeline prepares inputs."""
    return pipe._to_pixels(frames, pipe.config.height, pipe.config.width)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8, as the pipeline does."""
    return ((video[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def recon(pipe: TextToVideoPipeline, frames: np.ndarray) -> np.ndarray:
    """decode(encode(frames)) as uint8: what known frames reproduce."""
    with torch.no_grad():
        return to_uint8(pipe.decode(pipe.encode_video(pixels(pipe, frames))))


def gen(pipe: TextToVideoPipeline, method: str = "__call__", *args: object, **kw: object):
    kw.setdefault("seed", 3)
    kw.setdefault("progress", False)
    return getattr(pipe, method)(*args, **kw)


# ------------------------------------------------------------------------------------------- t2v


def test_text_to_video_determinism_batch_and_seeds(pipe: TextToVideoPipeline) -> None:
    a, b = gen(pipe, "__call__", PROMPT), gen(pipe, "__call__", PROMPT)
    assert a.frames.shape == (9, 32, 32, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames) and torch.equal(a.latents, b.latents)
    c = gen(pipe, "__call__", PROMPT, seed=4)
    assert not torch.equal(a.latents, c.latents)
    assert a.latents.shape == (16, 3, 4, 4)
    assert a.metadata["task"] == "t2v" and a.metadata["seed"] == 3 and a.metadata["prompt"] == PROMPT
    # A list of prompts is a batch; one seed per prompt makes each clip independent of the batch.
    batch = gen(pipe, "__call__", [PROMPT, "a blue square staying still"], seed=[3, 4])
    assert isinstance(batch, list) and len(batch) == 2
    assert [r.metadata["seed"] for r in batch] == [3, 4]
    assert torch.allclose(batch[0].latents, a.latents, atol=1e-4)
    alone = gen(pipe, "__call__", "a blue square staying still", seed=4)
    assert torch.allclose(batch[1].latents, alone.latents, atol=1e-4)
    with pytest.raises(TubeletError, match="one per prompt"):
        gen(pipe, "__call__", [PROMPT, PROMPT], seed=[1])


def test_callback_gets_each_steps_state_and_clean_estimate(pipe: TextToVideoPipeline) -> None:
    """callback(step, num_steps, x, denoised) after every step: the state and the step's clean-clip
    estimate (latents); the last step lands on its estimate, and known frames are kept in it."""
    seen: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []

    def callback(i: int, n: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        seen.append((i, n, x.clone(), denoised.clone()))

    r = gen(pipe, "__call__", PROMPT, callback=callback)
    assert [(i, n) for i, n, _, _ in seen] == [(1, 2), (2, 2)]
    assert all(x.shape == d.shape == (1, *r.latents.shape) for _, _, x, d in seen)
    assert not torch.equal(seen[0][3], seen[1][3])
    assert torch.allclose(seen[-1][3][0], r.latents, atol=1e-6) and torch.equal(seen[-1][2][0], r.latents)
    assert torch.equal(gen(pipe, "__call__", PROMPT).latents, r.latents)  # watching changes nothing
    seen.clear()
    image = rand_frames(1, 32, 32, seed=1)[0]
    i2v = gen(pipe, "image_to_video", PROMPT, image, callback=callback)
    assert len(seen) == 2 and all(torch.equal(d[0, :, :1], i2v.latents[:, :1]) for _, _, _, d in seen)


def test_bad_settings_are_clear_errors(pipe: TextToVideoPipeline) -> None:
    # A length the model cannot make: the next one is generated and trimmed back, with a note...
    notes: list[str] = []
    r = gen(pipe, "__call__", PROMPT, num_frames=8, on_note=notes.append)
    assert r.frames.shape[0] == 8 and r.metadata["num_frames"] == 8 and r.metadata["generated_frames"] == 9
    assert notes == ["num_frames=8: this model makes 1 + 4k frames; generated 9 and kept the first 8"]
    assert r.metadata["notes"] == notes
    full = gen(pipe, "__call__", PROMPT, num_frames=9)
    assert np.array_equal(r.frames, full.frames[:8])  # the same clip, cut
    # ... except for tasks that fix both ends of the clip: those name the lengths the model makes
    with pytest.raises(TubeletError, match=r"loop fixes both ends.*1 \+ 4k.*\[1, 5, 9, 13, 17\]"):
        gen(pipe, "loop", PROMPT, num_frames=8)
    with pytest.raises(TubeletError, match="multiples of 16"):
        gen(pipe, "__call__", PROMPT, height=20)
    with pytest.raises(TubeletError, match="unknown sampler"):
        gen(pipe, "__call__", PROMPT, sampler="nope")
    with pytest.raises(TubeletError, match="no prompt"):
        gen(pipe, "__call__", [])


def test_missing_embedded_model_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tubelet.pipelines.loading

    monkeypatch.setattr(tubelet.pipelines.loading, "default_model_dir", lambda: tmp_path / "gone")
    with pytest.raises(ModelLoadError, match="embedded default model is missing"):
        TextToVideoPipeline.from_pretrained()


def test_save_load_round_trip_and_saved_metadata(pipe: TextToVideoPipeline, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["vae_scale_factor_spatial"] == pipe.vae.spatial_factor
    assert saved["vae_scale_factor_temporal"] == pipe.vae.temporal_factor
    loaded = TextToVideoPipeline.from_pretrained(tmp_path / "model")
    a, b = gen(pipe, "__call__", PROMPT), gen(loaded, "__call__", PROMPT)
    assert np.array_equal(a.frames, b.frames)
    path = b.save(tmp_path / "clip.mp4")
    meta = read_metadata(path)
    assert meta["prompt"] == PROMPT and meta["seed"] == 3 and meta["task"] == "t2v"


# ------------------------------------------------------------------------------------------- inputs


def test_inputs_are_centre_cropped_and_resampled(pipe: TextToVideoPipeline) -> None:
    frames = np.zeros((1, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = 255  # a white centre band as wide as the square crop
    x = pipe._to_pixels(frames, 16, 16)
    assert x.shape == (1, 3, 1, 16, 16) and float(x.min()) > 0.95  # aspect kept, centre cropped
    src = np.arange(24)[:, None, None, None].repeat(3, -1).astype(np.uint8)  # frame i holds value i
    half = resample_frames(src, 24.0, 8.0)
    assert half[:, 0, 0, 0].tolist() == [0, 3, 6, 9, 12, 15, 18, 21]
    double = resample_frames(src[:3], 8.0, 16.0)
    assert double[:, 0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]


# ------------------------------------------------------------------------------------------- i2v


def test_image_to_video_first_frame_is_the_encoded_image(pipe: TextToVideoPipeline, caplog) -> None:
    image = rand_frames(1, 48, 40, seed=1)[0]  # another size: resized + cropped, with a note
    with caplog.at_level(logging.WARNING, logger="tubelet.pipelines"):
        r = gen(pipe, "image_to_video", PROMPT, image)
    with torch.no_grad():
        z0 = pipe.encode_video(pixels(pipe, image[None]))
    assert torch.equal(r.latents[:, :1], z0[0])  # the known latent frame is kept exactly
    expected = recon(pipe, image[None])[0].astype(int)
    err = np.abs(r.frames[0].astype(int) - expected)
    plain = gen(pipe, "__call__", PROMPT)
    err_plain = np.abs(plain.frames[0].astype(int) - expected)
    assert err.max() <= 1 and err_plain.mean() > 20 * max(err.mean(), 0.1)
    m = r.metadata
    assert m["task"] == "i2v" and m["known_latent_frames"] == [0] and m["new_frames"] == [[1, 9]]
    assert m["inputs"]["image"]["height"] == 48 and m["inputs"]["image"]["width"] == 40
    assert any("40x48 center-cropped" in n for n in m["notes"])
    assert sum("40x48 center-cropped" in rec.message for rec in caplog.records) == 1  # reported once
    # Determinism holds for conditioned tasks too.
    assert np.array_equal(gen(pipe, "image_to_video", PROMPT, image).frames, r.frames)


def test_first_last_and_last_only(pipe: TextToVideoPipeline, tmp_path: Path) -> None:
    first, last = rand_frames(2, 32, 32, seed=2)
    write_video(tmp_path / "b.png.mp4", last[None], 8.0, sidecar=False)  # a video path gives its first frame
    from PIL import Image

    Image.fromarray(first).save(tmp_path / "a.png")
    r = gen(pipe, "image_to_video", PROMPT, tmp_path / "a.png", last_image=last, num_frames=13)
    with torch.no_grad():
        z_first = pipe.encode_video(pixels(pipe, first[None]))
        z_last = pipe._encode_still(pixels(pipe, last[None]))
    assert torch.equal(r.latents[:, :1], z_first[0]) and torch.equal(r.latents[:, -1:], z_last[0])
    assert r.metadata["task"] == "first_last" and r.metadata["known_latent_frames"] == [0, 3]
    assert r.metadata["new_frames"] == [[1, 9]]
    assert r.metadata["inputs"]["image"]["source"] == str(tmp_path / "a.png")
    only = gen(pipe, "image_to_video", PROMPT, last_image=tmp_path / "b.png.mp4")
    assert only.metadata["task"] == "last_frame" and only.metadata["new_frames"] == [[0, 5]]
    with pytest.raises(TubeletError, match="at least 3 latent frames"):
        gen(pipe, "image_to_video", PROMPT, first, last_image=last, num_frames=5)


# ------------------------------------------------------------------------------------------- extension


def test_extend_forward_output_contains_the_input(pipe: TextToVideoPipeline) -> None:
    clip = rand_frames(11, 32, 32, seed=3)
    r = gen(pipe, "extend", PROMPT, clip, num_frames=17)  # 5 latent frames: 2 known by default
    tail = clip[-5:]
    with torch.no_grad():
        z = pipe.encode_video(pixels(pipe, tail))
    assert torch.equal(r.latents[:, :2], z[0])
    assert np.abs(r.frames[:5].astype(int) - recon(pipe, tail).astype(int)).max() <= 1
    m = r.metadata
    assert m["task"] == "extend_forward" and m["context_latents"] == 2 and m["context_frames"] == 5
    assert m["new_frames"] == [[5, 17]] and r.frames.shape[0] == 17
    one = gen(pipe, "extend", PROMPT, clip, num_frames=17, context_latents=1)
    assert one.metadata["new_frames"] == [[1, 17]]
    with pytest.raises(TubeletError, match="too short"):
        gen(pipe, "extend", PROMPT, clip[:4], num_frames=17, context_latents=3)  # needs 9 frames
    with pytest.raises(TubeletError, match="context_latents=5"):
        gen(pipe, "extend", PROMPT, clip, num_frames=17, context_latents=5)


def test_extend_backward_and_connect_keep_their_known_frames(pipe: TextToVideoPipeline) -> None:
    a, b = rand_frames(9, 32, 32, seed=4), rand_frames(9, 32, 32, seed=5)
    r = gen(pipe, "extend", PROMPT, b, backward=True, num_frames=13)  # 4 latents, 2 known at the end
    with torch.no_grad():
        head = pipe._encode_groups(pixels(pipe, b[:8]))
    assert torch.equal(r.latents[:, 2:], head[0])
    assert r.metadata["task"] == "extend_backward" and r.metadata["new_frames"] == [[0, 5]]
    with pytest.raises(TubeletError, match="too short"):
        gen(pipe, "extend", PROMPT, b[:2], backward=True)

    c = gen(pipe, "connect", PROMPT, a, b, num_frames=17)  # 5 latents: 1 known on each side
    with torch.no_grad():
        za = pipe.encode_video(pixels(pipe, a[-1:]))
        zb = pipe._encode_groups(pixels(pipe, b[:4]))
    assert torch.equal(c.latents[:, :1], za[0]) and torch.equal(c.latents[:, -1:], zb[0])
    assert c.metadata["task"] == "connect" and c.metadata["new_frames"] == [[1, 13]]
    assert c.metadata["known_latent_frames"] == [0, 4]
    with pytest.raises(TubeletError, match="at least 3 latent frames"):
        gen(pipe, "connect", PROMPT, a, b, num_frames=5)


def test_clip_files_are_resampled_and_resized_with_notes(pipe: TextToVideoPipeline, tmp_path: Path) -> None:
    clip = rand_frames(24, 40, 56, seed=6)
    path = write_video(tmp_path / "in.mp4", clip, 16.0, sidecar=False)
    r = gen(pipe, "extend", PROMPT, path)
    notes = r.metadata["notes"]
    assert any("16 fps to the model's 8 fps" in n for n in notes)
    assert any("56x40 center-cropped" in n for n in notes)
    assert r.metadata["inputs"]["video"]["frames"] == 12 and r.metadata["inputs"]["video"]["fps"] == 16.0
    # An in-memory Video at another rate is resampled the same way.
    v = gen(pipe, "extend", PROMPT, Video(clip, 16.0))
    assert v.metadata["inputs"]["video"]["frames"] == 12
    # Broken inputs are clear errors.
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(VideoError, match="plain text"):
        gen(pipe, "extend", PROMPT, bad)
    with pytest.raises(VideoError, match="file not found"):
        gen(pipe, "image_to_video", PROMPT, tmp_path / "missing.png")
    with pytest.raises(TubeletError, match="uint8"):
        gen(pipe, "image_to_video", PROMPT, np.zeros((32, 32, 3), np.float32))


# ------------------------------------------------------------------------------------------- loop, edit


def test_loop_closes_on_its_first_frame(pipe: TextToVideoPipeline) -> None:
    r = gen(pipe, "loop", PROMPT)
    plain = gen(pipe, "__call__", PROMPT)
    assert r.frames.shape == plain.frames.shape == (9, 32, 32, 3)
    assert np.array_equal(r.frames[0], plain.frames[0])  # pass 1 is the plain sample
    assert r.latents.shape == (16, 4, 4, 4)  # F' + 1: the closing latent frame

    def gap(latents: torch.Tensor, last: int) -> float:
        """Distance of latent frame `last` from the still encoding of the clip's own frame 0."""
        with torch.no_grad():
            first = pipe.decode(latents[None, :, :1])
            still = pipe._encode_still(first)[0, :, 0]
        return float((latents[:, last] - still).norm())

    assert gap(r.latents, -1) < 1e-5 * max(1.0, gap(plain.latents, -1))
    assert gap(plain.latents, -1) > 1.0
    assert r.metadata["task"] == "loop" and r.metadata["known_latent_frames"] == [0, 3]
    with pytest.raises(TubeletError, match="at least 2 latent frames"):
        gen(pipe, "loop", PROMPT, num_frames=1)


def test_edit_strength_zero_is_the_reconstruction_and_one_is_t2v(pipe: TextToVideoPipeline) -> None:
    clip = rand_frames(11, 32, 32, seed=7)  # 11 frames: the first 9 are edited (a note says so)
    r0 = gen(pipe, "edit", PROMPT, clip, strength=0.0)
    assert np.array_equal(r0.frames, recon(pipe, clip[:9]))
    assert r0.metadata["task"] == "edit" and r0.metadata["new_frames"] == []
    assert any("first 9 of 11 frames" in n for n in r0.metadata["notes"])
    r1 = gen(pipe, "edit", PROMPT, clip, strength=1.0)
    assert torch.allclose(r1.latents, gen(pipe, "__call__", PROMPT).latents, atol=1e-5)
    half = gen(pipe, "edit", PROMPT, clip, strength=0.5)
    assert not np.array_equal(half.frames, r0.frames) and half.metadata["strength"] == 0.5
    with pytest.raises(TubeletError, match=r"strength must be in \[0, 1\]"):
        gen(pipe, "edit", PROMPT, clip, strength=1.5)
    with pytest.raises(TubeletError, match="fewer than num_frames=13"):
        gen(pipe, "edit", PROMPT, clip, num_frames=13)


# ------------------------------------------------------------------------------------------- pixel space


def test_pixel_space_conditioning() -> None:
    pix = make_pipe(vae=False, height=16, width=16, num_frames=5)
    image = rand_frames(1, 16, 16, seed=8)[0]
    r = gen(pix, "image_to_video", PROMPT, image)
    assert np.abs(r.frames[0].astype(int) - image.astype(int)).max() <= 1  # pixel space: exact
    assert r.metadata["new_frames"] == [[1, 5]]
    clip = rand_frames(6, 16, 16, seed=9)
    e = gen(pix, "extend", PROMPT, clip)  # 5 latent frames = 5 frames: the last 2 of the clip known
    assert np.abs(e.frames[:2].astype(int) - clip[-2:].astype(int)).max() <= 1
    odd = TextToVideoPipeline(
        VideoDiT(dataclasses.replace(DIT_PRESETS["tiny"], in_channels=4, out_channels=4)),
        ByteTextEncoder(BYTE_TEXT_PRESETS["tiny"]),
        None,
        PipelineConfig(height=16, width=16, num_frames=5),
    )
    with pytest.raises(TubeletError, match="pixel-space model has 4 input channels"):
        gen(odd, "image_to_video", PROMPT, image)


def test_pixel_space_tubelets_every_task() -> None:
    """A pixel-space model with (4, 4, 4) tubelets runs every task; known frames come back exactly and
    frame counts must fill whole tubelets."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(DIT_PRESETS["tiny"], in_channels=3, out_channels=3, patch_size=(4, 4, 4))
    dit = VideoDiT(cfg)
    dit.init_weights(zero_head=False)
    pcfg = PipelineConfig(height=16, width=16, num_frames=16, num_inference_steps=2, guidance_scale=2.0)
    pix = TextToVideoPipeline(dit, ByteTextEncoder(BYTE_TEXT_PRESETS["tiny"]), None, pcfg)
    image = rand_frames(1, 16, 16, seed=8)[0]
    clip, other = rand_frames(20, 16, 16, seed=9), rand_frames(12, 16, 16, seed=10)

    t2v = gen(pix, "__call__", PROMPT)
    assert t2v.frames.shape == (16, 16, 16, 3)
    i2v = gen(pix, "image_to_video", PROMPT, image, last_image=image)
    assert np.abs(i2v.frames[[0, -1]].astype(int) - image.astype(int)).max() <= 1
    ext = gen(pix, "extend", PROMPT, clip)
    assert np.abs(ext.frames[:8].astype(int) - clip[-8:].astype(int)).max() <= 1
    back = gen(pix, "extend", PROMPT, clip, backward=True)
    assert np.abs(back.frames[-8:].astype(int) - clip[:8].astype(int)).max() <= 1
    con = gen(pix, "connect", PROMPT, clip, other)
    assert con.metadata["known_latent_frames"] == [0, 1, 2, 3, 4, 11, 12, 13, 14, 15]  # the default context
    assert np.abs(con.frames[:5].astype(int) - clip[-5:].astype(int)).max() <= 1
    assert np.abs(con.frames[11:].astype(int) - other[:5].astype(int)).max() <= 1
    loop = gen(pix, "loop", PROMPT)
    # one extra tubelet of closing frames (copies of frame 0) is sampled and dropped
    assert loop.frames.shape[0] == 16 and loop.metadata["known_latent_frames"] == [0, 16, 17, 18, 19]
    assert loop.latents is not None and loop.latents.shape[1] == 20
    assert np.array_equal(loop.frames[0], t2v.frames[0])  # pass 1 is the plain sample
    edit = gen(pix, "edit", PROMPT, clip, strength=0.5)
    assert edit.frames.shape[0] == 20
    seventeen = gen(pix, "__call__", PROMPT, num_frames=17)
    assert seventeen.frames.shape[0] == 17 and seventeen.metadata["generated_frames"] == 20
    with pytest.raises(TubeletError, match=r"connect fixes both ends.*multiples of 4"):
        gen(pix, "connect", PROMPT, clip, other, num_frames=17)


def test_pipeline_is_exported_at_package_top_level() -> None:
    """`from tubelet import TextToVideoPipeline` (the documented API) without loading torch on
    `import tubelet` alone; unknown names are an AttributeError."""
    import subprocess
    import sys

    code = (
        "import sys, tubelet; assert 'torch' not in sys.modules; "
        "from tubelet import TextToVideoPipeline; from tubelet.pipelines import TextToVideoPipeline as P; "
        "assert TextToVideoPipeline is P; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    import tubelet

    with pytest.raises(AttributeError, match="no_such_name"):
        tubelet.no_such_name  # noqa: B018


def test_generation_request_round_trip_validation_and_generate(
    pipe: TextToVideoPipeline, tmp_path: Path
) -> None:
    """A request validates without a model, survives to_dict/from_dict, and `generate` gives the clip
    the keywords give, with the request (its seed filled in) in the metadata; the caller's request is
    left as it was."""
    from tubelet.pipelines import GenerationRequest, RequestError

    req = GenerationRequest("a red circle moving right", seed=3, num_inference_steps=2)
    assert GenerationRequest.from_dict(req.to_dict()) == req
    out = pipe.generate(req, progress=False)
    same = pipe("a red circle moving right", seed=3, num_inference_steps=2, progress=False)
    assert np.array_equal(out.frames, same.frames)
    assert out.metadata["request"] == req.to_dict()

    unseeded = GenerationRequest("a red circle moving right", num_inference_steps=2)
    res = pipe.generate(unseeded, progress=False)
    assert unseeded.seed is None and isinstance(res.metadata["request"]["seed"], int)
    again = pipe.generate(GenerationRequest.from_dict(res.metadata["request"]), progress=False)
    assert np.array_equal(again.frames, res.frames)  # the sidecar's request reproduces the clip

    bad = [
        (dict(seed=2**64), "seed"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(strength=0.5), "strength only applies"),
        (dict(task="i2v"), "needs an image"),
        (dict(task="edit", video=str(tmp_path / "nope.mp4")), "file not found"),
        (dict(prompt="a \ud800 b"), "not valid text"),
        (dict(task="zoom"), "task"),
    ]
    for fields, message in bad:
        kw = {"prompt": "a red circle", **fields}
        with pytest.raises(RequestError, match=message):
            GenerationRequest(**kw).validate()
    with pytest.raises(RequestError, match="unknown"):
        GenerationRequest.from_dict({"prompt": "x", "colour": "red"})

"""Behaviour of the VBench-style dimensions on clips built here (classical ones and tiny random models)."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch

from tubelet.errors import ConfigError, ModelLoadError
from tubelet.eval import dimensions as D

H = W = 64


def _background(h: int = H, w: int = W) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    g = x * 2 + y
    return np.stack([g % 256, (g * 0.5 + 40) % 256, np.clip(200 - g * 0.8, 0, 255)], -1)  # (H, W, 3)


def _square_clip(positions: list[tuple[int, int]], size: int = 16, seed: int = 0) -> np.ndarray:
    """A textured square at the given (x, y) positions over a smooth background: (T, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (size, size, 3)).astype(np.float32)
    bg = _background()
    frames = []
    for px, py in positions:
        f = bg.copy()
        f[py : py + size, px : px + size] = tex
        frames.append(f)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _static(t: int = 17) -> D.Clip:
    return D.Clip(_square_clip([(20, 20)] * t), fps=8.0, name="static")


def _linear(t: int = 17, fps: float = 8.0, v: tuple[int, int] = (2, 1)) -> D.Clip:
    return D.Clip(_square_clip([(4 + v[0] * i, 20 + v[1] * i) for i in range(t)]), fps=fps, name="linear")


def _jumping(t: int = 17) -> D.Clip:
    rng = np.random.default_rng(1)
    pos = [(int(a), int(b)) for a, b in rng.integers(0, W - 16, (t, 2))]
    return D.Clip(_square_clip(pos), fps=8.0, name="jumping")


# ---------------------------------------------------------------------------- classical dimensions


def test_temporal_flickering_static_is_one_and_alternating_is_near_zero():
    dim = D.make_dimension("temporal_flickering")
    s = dim.score(_static(), "")
    assert s.value == 1.0
    assert s.details["static_filter"]["moving_pairs"] == 0

    frames = np.zeros((9, 32, 32, 3), np.uint8)
    frames[1::2] = 255  # black / white / black ...
    s2 = dim.score(D.Clip(frames), "")
    assert s2.value is not None and s2.value < 0.01  # uniform frames carry no flow: still "static"

    # Mild flicker: brightness +-10 on alternate frames -> (255 - 10) / 255.
    base = _square_clip([(20, 20)] * 9).astype(np.int16)
    base[1::2] += 10
    s3 = dim.score(D.Clip(np.clip(base, 0, 255).astype(np.uint8)), "")
    assert s3.value == pytest.approx((255 - 10) / 255, abs=2e-3)


def test_temporal_flickering_excludes_moving_clips_and_reports_them():
    dim = D.make_dimension("temporal_flickering")
    moving = dim.score(_linear(), "")
    assert moving.value is None
    assert "not static" in moving.details["excluded"]
    res = D.summarise(dim, {"a.mp4": dim.score(_static(), ""), "b.mp4": moving})
    assert res.score == 1.0
    assert res.per_clip == {"a.mp4": 1.0, "b.mp4": None}
    assert "b.mp4" in res.excluded and "a.mp4" not in res.excluded
    assert res.stand_in and "RAFT" in res.method


def test_static_filter_rule_constants():
    static, info = D.static_filter(_linear(t=17))
    assert not static
    assert info["threshold"] == pytest.approx(3 * 64 / 256)
    assert info["count_num"] == round(2 * 17 / 16)
    assert info["moving_pairs"] == 16


def test_motion_smoothness_linear_high_jumping_clearly_lower():
    dim = D.make_dimension("motion_smoothness")
    still = dim.score(_static(), "").value
    lin = dim.score(_linear(), "").value
    jump = dim.score(_jumping(), "").value
    assert still == 1.0
    assert lin > 0.995
    assert jump < lin - 0.01
    # After VBench normalisation the gap is large: (x - 0.706) / (0.9975 - 0.706).
    assert (lin - jump) / (0.9975 - 0.706) > 0.04
    assert dim.score(D.Clip(_static().frames[:2]), "").value is None  # fewer than 3 frames


def test_interpolate_midframe_recovers_linear_motion():
    c = _linear(t=3).frames
    mid = D.interpolate_midframe(c[0], c[2])
    assert mid.shape == c[1].shape and mid.dtype == np.uint8
    err = np.abs(mid.astype(int) - c[1]).mean()
    naive = np.abs((c[0].astype(float) + c[2]) / 2 - c[1]).mean()
    assert err < 1.0 < naive


def test_dynamic_degree_still_zero_fast_one_and_fraction():
    dim = D.make_dimension("dynamic_degree")
    still = dim.score(_static(), "")
    fast = dim.score(_linear(), "")
    assert still.value == 0.0 and fast.value == 1.0
    assert fast.details["threshold"] == pytest.approx(6 * 64 / 256)
    assert fast.details["count_num"] == round(4 * 17 / 16)
    res = D.summarise(dim, {"s": still, "f": fast, "f2": fast})
    assert res.score == pytest.approx(2 / 3)


def test_dynamic_degree_subsamples_by_fps():
    clip = _linear(t=25, fps=24.0, v=(1, 0))  # 3 px between sampled frames
    dyn, info = D.dynamic_degree_check(clip)
    assert info["interval"] == 3  # round(24 / 8)
    assert info["pairs"] == 8  # frames 0, 3, ..., 24
    assert info["count_num"] == round(4 * 9 / 16)
    assert dyn
    # At 4 fps the threshold doubles (VBench: max(1, 8 / fps)).
    _, info4 = D.dynamic_degree_check(_linear(t=9, fps=4.0))
    assert info4["threshold"] == pytest.approx(2 * 6 * 64 / 256)


def test_top_fraction_mean_and_flow_direction():
    flow = np.zeros((10, 10, 2), np.float32)
    flow[0, :5, 0] = 3.0  # 5 of 100 pixels move 3 px
    assert D.top_fraction_mean(flow, 0.05) == pytest.approx(3.0)
    assert D.top_fraction_mean(flow, 0.10) == pytest.approx(1.5)
    c = _linear(t=2)
    fl = c.flow(0, 1)  # square moves +2 px in x, +1 px in y
    sq = fl[22:34, 6:18]  # inside the square in frame 0
    assert np.median(sq[..., 0]) == pytest.approx(2.0, abs=0.3)
    assert np.median(sq[..., 1]) == pytest.approx(1.0, abs=0.3)


def test_clip_validation_and_dimension_names():
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        D.Clip(np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        D.Clip(np.zeros((4, 8, 8, 3), np.float32))
    assert D.parse_dimension_list("dynamic_degree, motion_smoothness") == [
        "dynamic_degree",
        "motion_smoothness",
    ]
    assert D.parse_dimension_list(None) == D.dimension_names()
    with pytest.raises(ConfigError, match=r"valid: .*temporal_flickering"):
        D.parse_dimension_list("dynamic_degree,sharpness")
    with pytest.raises(ConfigError):
        D.make_dimension("nope")
    for name in ("temporal_flickering", "motion_smoothness", "dynamic_degree", "clip_text_alignment"):
        assert D.DIMENSIONS[name].stand_in
    for name in ("subject_consistency", "background_consistency", "aesthetic_quality"):
        assert not D.DIMENSIONS[name].stand_in


# ---------------------------------------------------------------------------- preprocessing


def test_preprocessing_shapes_and_normalisation():
    frames = np.full((2, 48, 96, 3), 128, np.uint8)
    x = D.clip_preprocess(frames)
    assert tuple(x.shape) == (2, 3, 224, 224)
    expect = (128 / 255 - torch.tensor(D.CLIP_MEAN)) / torch.tensor(D.CLIP_STD)
    torch.testing.assert_close(x[0, :, 100, 100], expect.float(), atol=1e-4, rtol=0)
    y = D.dino_preprocess(frames)
    assert tuple(y.shape) == (2, 3, 224, 448)  # shorter side to 224, aspect kept, no crop
    expect = (128 / 255 - torch.tensor(D.IMAGENET_MEAN)) / torch.tensor(D.IMAGENET_STD)
    torch.testing.assert_close(y[1, :, 7, 300], expect.float(), atol=1e-4, rtol=0)
    # Centre crop picks the middle of the long side.
    ramp = np.zeros((1, 32, 64, 3), np.uint8)
    ramp[0, :, 16:48] = 255
    z = D.clip_preprocess(ramp)
    assert z[0, 0, :, 5:-5].min() > 1.5  # whole crop lies inside the bright middle half


# ---------------------------------------------------------------------------- model-backed dimensions


def _tiny_vit(path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(path)


def _tiny_clip(path, projection_dim=16, tokenizer=True):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(1)
    chars = list(string.ascii_lowercase + string.digits + ".,!-'")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            image_size=224,
            patch_size=32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=projection_dim,
    )
    CLIPModel(cfg).save_pretrained(path)
    if tokenizer:
        CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(path)


def _model_clips():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)  # model resolution: resize is the identity
    a[2:] = a[0]
    b = rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    return D.Clip(a, name="a"), D.Clip(b, name="b")


def _consistency(feats: torch.Tensor) -> tuple[float, int]:
    f = torch.nn.functional.normalize(feats.double(), dim=-1)
    tot = 0.0
    for i in range(1, len(f)):
        tot += 0.5 * (max(0.0, float(f[i - 1] @ f[i])) + max(0.0, float(f[0] @ f[i])))
    return tot, len(f) - 1


def test_subject_consistency_matches_direct_dino_computation(tmp_path, monkeypatch):
    from transformers import ViTModel

    monkeypatch.setattr(D, "_BATCH", 3)  # several chunks per clip

    _tiny_vit(tmp_path / "dino-vitb16")
    dim = D.make_dimension("subject_consistency", weights=tmp_path)
    a, b = _model_clips()
    sa, sb = dim.score(a, ""), dim.score(b, "")

    ref = ViTModel.from_pretrained(tmp_path / "dino-vitb16", add_pooling_layer=False).eval()
    totals = []
    for clip in (a, b):
        x = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255.0
        x = (x - torch.tensor(D.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(D.IMAGENET_STD).view(
            1, 3, 1, 1
        )
        with torch.no_grad():
            cls = ref(pixel_values=x).last_hidden_state[:, 0]
        totals.append(_consistency(cls))
    assert sa.value == pytest.approx(totals[0][0] / totals[0][1], abs=1e-5)
    assert sb.value == pytest.approx(totals[1][0] / totals[1][1], abs=1e-5)
    # VBench aggregates over all frame pairs of all clips (3 + 2 pairs), not per clip.
    agg = dim.aggregate([sa, sb])
    assert agg == pytest.approx((totals[0][0] + totals[1][0]) / 5, abs=1e-5)
    assert agg != pytest.approx((sa.value + sb.value) / 2, abs=1e-6)
    # A non-square clip runs through the interpolated position embeddings.
    wide = D.Clip(np.random.default_rng(0).integers(0, 256, (2, 40, 72, 3), dtype=np.uint8))
    v = dim.score(wide, "").value
    assert 0.0 <= v <= 1.0


def test_background_consistency_and_text_alignment_match_direct_clip(tmp_path, monkeypatch):
    from transformers import CLIPModel, CLIPTokenizer

    monkeypatch.setattr(D, "_BATCH", 2)

    _tiny_clip(tmp_path / "clip-vit-base-patch32")
    bg = D.make_dimension("background_consistency", weights=tmp_path)
    ta = D.make_dimension("clip_text_alignment", weights=tmp_path)
    a, _ = _model_clips()
    ref = CLIPModel.from_pretrained(tmp_path / "clip-vit-base-patch32").eval()
    x = torch.from_numpy(a.frames).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(D.CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(D.CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        img = ref.visual_projection(ref.vision_model(pixel_values=x).pooler_output)
    tot, n = _consistency(img)
    assert bg.score(a, "").value == pytest.approx(tot / n, abs=1e-5)

    prompt = "a red circle moves left"
    tok = CLIPTokenizer.from_pretrained(tmp_path / "clip-vit-base-patch32")
    ids = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        txt = ref.text_projection(ref.text_model(**ids).pooler_output)
    cos = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1)[0]
    s = ta.score(a, prompt)
    assert s.value == pytest.approx(float(cos.clamp(min=0).mean()), abs=1e-5)
    assert ta.stand_in and not ta.vbench


def test_aesthetic_quality_matches_direct_head(tmp_path):
    from safetensors.torch import save_file
    from transformers import CLIPModel

    _tiny_clip(tmp_path / "clip-vit-large-patch14", projection_dim=8, tokenizer=False)
    (tmp_path / "aesthetic").mkdir()
    g = torch.Generator().manual_seed(2)
    w, b = torch.randn(1, 8, generator=g) * 5, torch.tensor([55.0])
    save_file({"weight": w, "bias": b}, str(tmp_path / "aesthetic" / "head.safetensors"))
    dim = D.make_dimension("aesthetic_quality", weights=tmp_path)
    a, bclip = _model_clips()
    ref = CLIPModel.from_pretrained(tmp_path / "clip-vit-large-patch14").eval()
    x = torch.from_numpy(a.frames).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(D.CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(D.CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        img = torch.nn.functional.normalize(
            ref.visual_projection(ref.vision_model(pixel_values=x).pooler_output), dim=-1
        )
    expect = float(((img @ w[0] + b) / 10).mean())
    sa = dim.score(a, "")
    assert sa.value == pytest.approx(expect, abs=1e-5)
    assert dim.aggregate([sa, dim.score(bclip, "")]) == pytest.approx(
        (sa.value + dim.score(bclip, "").value) / 2
    )

    # A head that does not match the CLIP projection size is a clear error.
    save_file(
        {"weight": torch.zeros(1, 5), "bias": torch.zeros(1)},
        str(tmp_path / "aesthetic" / "head.safetensors"),
    )
    bad = D.make_dimension("aesthetic_quality", weights=tmp_path)
    with pytest.raises(ModelLoadError, match=r"weight \(1, 8\)"):
        bad.score(a, "")


def test_missing_weights_message_names_dimension_and_layout(tmp_path):
    msg = D.missing_weights("subject_consistency", None)
    assert "subject_consistency" in msg and "dino-vitb16" in msg and "--weights" in msg
    with pytest.raises(
        D.WeightsMissingError, match=r"aesthetic_quality.*clip-vit-large-patch14.*head\.safetensors"
    ):
        D.make_dimension("aesthetic_quality", weights=tmp_path)
    (tmp_path / "clip-vit-base-patch32").mkdir()
    msg = D.missing_weights("background_consistency", tmp_path)
    assert str(tmp_path / "clip-vit-base-patch32") in msg and "config.json missing" in msg
    assert D.missing_weights("dynamic_degree", None) is None
    # Model weights without tokenizer files: background consistency runs, text alignment does not.
    _tiny_clip(tmp_path / "clip-vit-base-patch32", tokenizer=False)
    assert D.missing_weights("background_consistency", tmp_path) is None
    assert "tokenizer" in D.missing_weights("clip_text_alignment", tmp_path)

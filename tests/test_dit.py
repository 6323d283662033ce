"""VideoDiT: numerical equality with diffusers' WanTransformer3DModel, conversion, and behaviour."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tubelet.convert.wan_transformer import convert_transformer_state_dict, dit_config_from_diffusers
from tubelet.errors import ConfigError, ConversionError
from tubelet.models.dit import DIT_PRESETS, DiTConfig, VideoDiT, dit_config
from tubelet.models.hub import load_safetensors
from tubelet.models.layers import (
    apply_rope,
    attention,
    depthwise_conv3d_tokens,
    get_attention_backend,
    linear,
    rope_angles_3d,
    rope_freqs,
    set_attention_backend,
    timestep_embedding,
)

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5  # relative error: max|a - b| / max|b|
IN_CH, TEXT_DIM = 8, 32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def randomise_(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere, including norm weights/biases and modulation tables."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim == 1 or "scale_shift_table" in name:
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[1] if p.ndim >= 2 else 1) * 1.2)


def make_reference(patch_size=(1, 2, 2), out_channels=IN_CH, seed=0):
    ref = diffusers.WanTransformer3DModel(
        patch_size=patch_size,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=IN_CH,
        out_channels=out_channels,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
    ).eval()
    randomise_(ref, seed)
    return ref


def convert(ref) -> VideoDiT:
    cfg = dit_config_from_diffusers(dict(ref.config))
    model = VideoDiT(cfg).eval()
    model.load_state_dict(convert_transformer_state_dict(ref.state_dict(), cfg), strict=True)
    return model


@pytest.fixture(scope="module")
def pair():
    ref = make_reference()
    return ref, convert(ref)


def inputs(b, f, h, w, seed=0, length=7, channels=IN_CH):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, channels, f, h, w, generator=g)
    t = torch.rand(b, generator=g) * 1000
    ctx = torch.randn(b, length, TEXT_DIM, generator=g)
    return x, t, ctx


# --------------------------------------------------------------------------------------------
# Numerical equality with diffusers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [(2, 3, 12, 20), (2, 5, 8, 8), (1, 1, 12, 20), (2, 1, 6, 4)],
    ids=["B2-F3-6x10", "B2-F5-4x4", "B1-F1-6x10", "B2-F1-3x2"],
)
def test_matches_diffusers(pair, shape):
    ref, model = pair
    x, t, ctx = inputs(*shape)
    with torch.no_grad():
        expected = ref(x, t, ctx).sample
        got = model(x, t, ctx)
    assert got.shape == x.shape
    assert rel_err(got, expected) <= TOL


def test_matches_diffusers_with_autograd_paths(pair):
    """The training code path (autograd on: F.linear, SDPA) agrees as well."""
    ref, model = pair
    x, t, ctx = inputs(2, 3, 12, 20, seed=3)
    with torch.no_grad():
        expected = ref(x, t, ctx).sample
    got = model(x.requires_grad_(), t, ctx)
    assert rel_err(got.detach(), expected) <= TOL


@pytest.mark.parametrize("patch_size,out_channels", [((2, 2, 2), IN_CH), ((1, 2, 2), 4)])
def test_matches_diffusers_other_patch_and_channels(patch_size, out_channels):
    ref = make_reference(patch_size=patch_size, out_channels=out_channels, seed=5)
    model = convert(ref)
    x, t, ctx = inputs(2, 4, 8, 12, seed=1)
    with torch.no_grad():
        expected = ref(x, t, ctx).sample
        got = model(x, t, ctx)
    assert got.shape == (2, out_channels, 4, 8, 12)
    assert rel_err(got, expected) <= TOL


def test_per_frame_timesteps_match_diffusers_per_token(pair):
    """t of shape (B, F') equals diffusers given the same t repeated for every token of a frame."""
    ref, model = pair
    x, _, ctx = inputs(2, 3, 12, 20, seed=2)
    t = torch.tensor([[0.0, 250.0, 999.0], [500.0, 10.0, 730.5]])
    with torch.no_grad():
        expected = ref(x, t.repeat_interleave(6 * 10, dim=1), ctx).sample
        got = model(x, t, ctx)
    assert rel_err(got, expected) <= TOL


def test_loads_diffusers_checkpoint_from_disk(tmp_path):
    ref = make_reference(seed=7)
    ref.save_pretrained(tmp_path / "wan", safe_serialization=True)
    raw_cfg = json.loads((tmp_path / "wan" / "config.json").read_text())
    state = load_safetensors(tmp_path / "wan" / "diffusion_pytorch_model.safetensors")
    cfg = dit_config_from_diffusers(raw_cfg)
    model = VideoDiT(cfg).eval()
    model.load_state_dict(convert_transformer_state_dict(state, cfg))
    x, t, ctx = inputs(1, 3, 6, 10, seed=4)
    with torch.no_grad():
        assert rel_err(model(x, t, ctx), ref(x, t, ctx).sample) <= TOL


def test_bfloat16_close_to_float32(pair):
    """bf16 (incl. the CPU low-precision attention route, N >= 256 tokens) stays near fp32."""
    ref, model = pair
    x, t, ctx = inputs(1, 1, 32, 32, seed=6)  # 256 tokens
    with torch.inference_mode():
        expected = ref(x, t, ctx).sample
        got = VideoDiT(model.config).eval()
        got.load_state_dict(model.state_dict())
        out = got.to(torch.bfloat16)(x.bfloat16(), t, ctx.bfloat16())
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), expected) < 5e-2


# --------------------------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------------------------


def tiny_model(seed=0, **overrides) -> VideoDiT:
    """Tiny model with every weight random (a fresh model's zero head would hide most behaviour)."""
    model = VideoDiT(dit_config({**_tiny_dict(), **overrides})).eval()
    randomise_(model, seed)
    return model


def _tiny_dict():
    return {"dim": 32, "num_heads": 2, "num_layers": 2, "ffn_dim": 48, "text_dim": TEXT_DIM, "in_channels": IN_CH,
            "out_channels": IN_CH, "freq_dim": 16}  # fmt: skip


def test_shapes_and_determinism():
    model = tiny_model()
    for b, f, h, w in [(1, 1, 2, 2), (2, 3, 6, 10), (3, 2, 4, 8)]:
        x, t, ctx = inputs(b, f, h, w, length=5)
        with torch.no_grad():
            a, b2 = model(x, t, ctx), model(x, t, ctx)
        assert a.shape == x.shape and a.dtype == x.dtype
        assert torch.isfinite(a).all()
        assert torch.equal(a, b2)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(seed=1)
    x, t, ctx = inputs(2, 3, 4, 6)
    with torch.no_grad():
        before = model(x, t, ctx)
    model.save_pretrained(tmp_path / "dit")
    loaded = VideoDiT.from_pretrained(tmp_path / "dit")
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(x, t, ctx), before)


def test_fresh_model_predicts_zero_velocity():
    """Wan's initialisation zeroes the output projection; the Xavier init covers each fused q/k/v part."""
    model = VideoDiT(dit_config(_tiny_dict())).eval()
    x, t, ctx = inputs(1, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), torch.zeros_like(x))
    w = model.blocks[0].self_attn.qkv.weight  # (3D, D): each (D, D) part has bound sqrt(6 / 2D)
    assert w.abs().max() <= math.sqrt(6 / (2 * 32)) and w.abs().max() > math.sqrt(6 / (4 * 32))


def test_xavier_embedders_carry_the_prompt():
    """embed_init="xavier" (the default model's) initialises the text/time embedders like the other
    linears; Wan's N(0, 0.02) shrinks a unit-scale 32-wide text feature ~20x."""
    torch.manual_seed(0)
    ctx = torch.randn(2, 5, TEXT_DIM)
    wan = VideoDiT(dit_config(_tiny_dict()))
    xav = VideoDiT(dit_config({**_tiny_dict(), "embed_init": "xavier"}))
    assert wan.text_embed.fc1.weight.std() < 0.025
    assert xav.text_embed.fc1.weight.std() > 0.1
    assert xav.text_embed(ctx).std() > 5 * wan.text_embed(ctx).std()


def test_pooled_text_conditions_the_modulation_and_ignores_padding():
    model = tiny_model(seed=7, pooled_text=True)
    x, t, ctx = inputs(2, 2, 4, 4, length=6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, 4:] = False
    padded = ctx.clone()
    padded[:, 4:] = 100.0  # masked tokens: neither cross-attention nor the pooled vector may see them
    with torch.no_grad():
        a = model(x, t, ctx, mask)
        assert rel_err(model(x, t, padded, mask), a) <= TOL
        model.pooled_embed.fc2.weight.zero_()
        model.pooled_embed.fc2.bias.zero_()
        assert rel_err(model(x, t, ctx, mask), a) > 1e-3  # the pooled path mattered
    plain = tiny_model(seed=7)
    assert plain.pooled_embed is None and not any("pooled" in n for n in plain.state_dict())


@pytest.mark.parametrize("pooled", [False, True])
def test_gradients_reach_every_parameter(pooled):
    model = tiny_model(seed=2, pooled_text=pooled).train()
    x, t, ctx = inputs(2, 2, 4, 4)
    model(x, t, ctx).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_same_gradients():
    model = tiny_model(seed=3).train()
    x, t, ctx = inputs(2, 3, 4, 4)

    def grads(ckpt: bool):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        xr = x.clone().requires_grad_()
        model(xr, t, ctx).square().mean().backward()
        return [xr.grad] + [p.grad.clone() for p in model.parameters()]

    plain, ckpt = grads(False), grads(True)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_per_frame_t_equal_values_equals_scalar_t():
    model = tiny_model(seed=4)
    x, _, ctx = inputs(2, 5, 4, 6)
    t = torch.tensor([120.0, 860.0])
    with torch.no_grad():
        scalar = model(x, t, ctx)
        per_frame = model(x, t[:, None].expand(2, 5), ctx)
        scalar_0d = model(x[:1], torch.tensor(120.0), ctx[:1])
    assert rel_err(per_frame, scalar) <= TOL
    assert rel_err(scalar_0d, scalar[:1]) <= TOL


def test_per_frame_t_conditions_each_frame():
    """Changing one frame's timestep changes the prediction (the frames interact through attention)."""
    model = tiny_model(seed=4)
    x, _, ctx = inputs(1, 3, 4, 4)
    with torch.no_grad():
        a = model(x, torch.tensor([[500.0, 500.0, 500.0]]), ctx)
        b = model(x, torch.tensor([[0.0, 500.0, 500.0]]), ctx)
    assert not torch.allclose(a, b)


def test_per_frame_t_with_temporal_patches_uses_each_token_frames_largest_t():
    """With pt > 1, t may come per input frame (B, F): a token frame takes its frames' largest t."""
    model = tiny_model(seed=5, patch_size=(2, 2, 2))
    x, _, ctx = inputs(2, 4, 4, 4)
    per_frame = torch.tensor([[0.0, 300.0, 0.0, 0.0], [700.0, 700.0, 200.0, 100.0]])
    per_token_frame = torch.tensor([[300.0, 0.0], [700.0, 200.0]])
    with torch.no_grad():
        assert torch.equal(model(x, per_frame, ctx), model(x, per_token_frame, ctx))


def test_x0_prediction_returns_the_velocity_of_its_clean_estimate():
    """prediction="x0": forward returns (x - x0_hat) / max(s, x0_min_s), per frame where t is per frame."""
    model = tiny_model(seed=6, patch_size=(2, 2, 2), prediction="x0", x0_min_s=0.05)
    x, _, ctx = inputs(2, 4, 4, 4)
    t = torch.tensor([[500.0, 500.0, 10.0, 10.0], [1000.0, 1000.0, 250.0, 250.0]])
    with torch.no_grad():
        v = model(x, t, ctx)
        model.config.prediction = "velocity"  # same weights: the head's raw output is x0_hat
        x0_hat = model(x, t, ctx)
    s = torch.tensor([[0.5, 0.5, 0.05, 0.05], [1.0, 1.0, 0.25, 0.25]]).view(2, 1, 4, 1, 1)
    torch.testing.assert_close(v, (x - x0_hat) / s, rtol=1e-5, atol=1e-5)
    # A fresh x0 model predicts x0_hat = 0 (the zero head), i.e. v = x / s.
    fresh = VideoDiT(dit_config({**_tiny_dict(), "prediction": "x0"})).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(x, torch.tensor([200.0, 800.0]), ctx), x / torch.tensor([0.2, 0.8]).view(2, 1, 1, 1, 1)
        )


def test_context_mask_hides_tokens():
    model = tiny_model(seed=5)
    x, t, ctx = inputs(2, 2, 4, 6, length=9)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 7:] = False
    with torch.no_grad():
        masked = model(x, t, ctx, mask)
        scrambled = ctx.clone()
        scrambled[~mask] = torch.randn(int((~mask).sum()), TEXT_DIM) * 10
        assert rel_err(model(x, t, scrambled, mask), masked) <= TOL
        # Same as giving each sample only its real tokens.
        for i, n in enumerate((4, 7)):
            alone = model(x[i : i + 1], t[i : i + 1], ctx[i : i + 1, :n])
            assert rel_err(masked[i : i + 1], alone) <= TOL
        # An all-True mask is the same as no mask; the masked tokens did matter without a mask.
        full = torch.ones(2, 9, dtype=torch.bool)
        assert rel_err(model(x, t, ctx, full), model(x, t, ctx)) <= TOL
        assert rel_err(model(x, t, scrambled), masked) > 1e-2


@pytest.mark.parametrize(
    "x_shape,t_shape,ctx_shape,mask,match",
    [
        ((2, IN_CH, 4, 4), (2,), (2, 5, TEXT_DIM), None, "B, C, F, H, W"),
        ((2, 3, 2, 4, 4), (2,), (2, 5, TEXT_DIM), None, "in_channels"),
        ((2, IN_CH, 2, 5, 4), (2,), (2, 5, TEXT_DIM), None, "divisible by the patch size"),
        ((2, IN_CH, 2, 4, 7), (2,), (2, 5, TEXT_DIM), None, "divisible by the patch size"),
        ((2, IN_CH, 2, 4, 4), (3,), (2, 5, TEXT_DIM), None, "t must have shape"),
        ((2, IN_CH, 2, 4, 4), (2, 3), (2, 5, TEXT_DIM), None, "t must have shape"),
        ((2, IN_CH, 2, 4, 4), (2,), (2, 5, TEXT_DIM + 1), None, "text_dim"),
        ((2, IN_CH, 2, 4, 4), (2,), (1, 5, TEXT_DIM), None, "context must be"),
        ((2, IN_CH, 2, 4, 4), (2,), (2, 5, TEXT_DIM), "float", "bool tensor"),
        ((2, IN_CH, 2, 4, 4), (2,), (2, 5, TEXT_DIM), "short", "bool tensor"),
        ((2, IN_CH, 2, 4, 4), (2,), (2, 5, TEXT_DIM), "empty", "no True entry"),
    ],
)
def test_bad_inputs_raise_value_error(x_shape, t_shape, ctx_shape, mask, match):
    model = tiny_model()
    m = None
    if mask == "float":
        m = torch.ones(ctx_shape[:2])
    elif mask == "short":
        m = torch.ones(ctx_shape[0], ctx_shape[1] - 1, dtype=torch.bool)
    elif mask == "empty":
        m = torch.ones(ctx_shape[:2], dtype=torch.bool)
        m[1] = False
    with pytest.raises(ValueError, match=match):
        model(torch.randn(x_shape), torch.rand(t_shape) * 1000, torch.randn(ctx_shape), m)


def test_presets_build_with_expected_sizes():
    for name in ("tiny", "small"):
        model = VideoDiT(dit_config(name))
        x = torch.randn(1, model.config.in_channels, 2, 4, 4)
        ctx = torch.randn(1, 3, model.config.text_dim)
        with torch.no_grad():
            assert model(x, torch.tensor([10.0]), ctx).shape == x.shape
    counts = {}
    for name in ("wan2.1-1.3b", "wan2.1-14b"):
        with torch.device("meta"):
            counts[name] = VideoDiT(dit_config(name)).num_parameters()
    assert 1.2e9 < counts["wan2.1-1.3b"] < 1.5e9
    assert 1.3e10 < counts["wan2.1-14b"] < 1.5e10
    assert dit_config("wan2.1-14b") == DIT_PRESETS["wan2.1-14b"]
    assert dit_config("wan2.1-14b") is not DIT_PRESETS["wan2.1-14b"]


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown DiT preset"):
        dit_config("huge")
    with pytest.raises(ConfigError, match="unknown key"):
        dit_config({**_tiny_dict(), "depth": 3})
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        DiTConfig(dim=30, num_heads=4, num_layers=1, ffn_dim=8, text_dim=8)
    with pytest.raises(ConfigError, match="head dim"):
        DiTConfig(dim=12, num_heads=4, num_layers=1, ffn_dim=8, text_dim=8)
    with pytest.raises(ConfigError, match="patch_size"):
        DiTConfig(dim=32, num_heads=2, num_layers=1, ffn_dim=8, text_dim=8, patch_size=(1, 2))
    with pytest.raises(ConfigError, match="embed_init"):
        DiTConfig(dim=32, num_heads=2, num_layers=1, ffn_dim=8, text_dim=8, embed_init="zeros")
    with pytest.raises(ConfigError, match="prediction"):
        DiTConfig(dim=32, num_heads=2, num_layers=1, ffn_dim=8, text_dim=8, prediction="eps")
    with pytest.raises(ConfigError, match="out_channels == in_channels"):
        DiTConfig(dim=32, num_heads=2, num_layers=1, ffn_dim=8, text_dim=8, out_channels=3, prediction="x0")


# --------------------------------------------------------------------------------------------
# Conversion errors
# --------------------------------------------------------------------------------------------


def test_conversion_rejects_missing_and_misshaped_tensors(pair):
    ref, model = pair
    sd = dict(ref.state_dict())
    cfg = model.config
    broken = {k: v for k, v in sd.items() if k != "blocks.1.attn2.to_k.weight"}
    with pytest.raises(ConversionError, match=r"blocks\.1\.attn2\.to_k\.weight"):
        convert_transformer_state_dict(broken, cfg)
    broken = {**sd, "blocks.0.ffn.net.2.bias": torch.zeros(3)}
    with pytest.raises(ConversionError, match=r"blocks\.0\.ffn\.net\.2\.bias.*shape"):
        convert_transformer_state_dict(broken, cfg)
    broken = {**sd, "blocks.0.attn2.add_k_proj.weight": torch.zeros(32, 32)}
    with pytest.raises(ConversionError, match="add_k_proj"):
        convert_transformer_state_dict(broken, cfg)


def test_conversion_config_checks(pair):
    ref, model = pair
    raw = dict(ref.config)
    assert dit_config_from_diffusers(raw) == model.config
    with pytest.raises(ConversionError, match="not supported yet"):
        dit_config_from_diffusers({**raw, "image_dim": 1280, "added_kv_proj_dim": 5120})
    with pytest.raises(ConversionError, match="not supported"):
        dit_config_from_diffusers({**raw, "qk_norm": "rms_norm"})
    with pytest.raises(ConversionError, match="WanVACETransformer3DModel"):
        dit_config_from_diffusers({**raw, "_class_name": "WanVACETransformer3DModel"})
    with pytest.raises(ConversionError, match="vace_layers"):
        dit_config_from_diffusers({**raw, "vace_layers": [0, 5]})
    with pytest.raises(ConversionError, match="head dim"):
        dit_config_from_diffusers({**raw, "attention_head_dim": 5})
    full = dit_config_from_diffusers({"_class_name": "WanTransformer3DModel"})  # diffusers defaults: Wan 14B
    assert full == DIT_PRESETS["wan2.1-14b"]


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.5, 999.0, 500.25])
    expected = get_timestep_embedding(t, 64, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(t, 64), expected, rtol=0, atol=0)


def test_rope_matches_diffusers_tables():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    head_dim, grid = 32, (3, 4, 5)
    ref = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=64)
    cos_ref, sin_ref = ref(torch.zeros(1, 1, grid[0], 2 * grid[1], 2 * grid[2]))  # (1, N, 1, hd)
    freqs = rope_freqs(rope_angles_3d(grid, head_dim), "cpu")  # (N, 1, hd/2) complex64
    assert torch.equal(freqs.real[:, 0], cos_ref[0, :, 0, 0::2]) and torch.equal(
        freqs.imag[:, 0], sin_ref[0, :, 0, 1::2]
    )
    # Same rotation as diffusers' real-arithmetic formula; preserves every channel pair's norm.
    x = torch.randn(2, freqs.shape[0], 3, head_dim)
    y = apply_rope(x, freqs)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s_ = cos_ref[0, :, :, 0::2], sin_ref[0, :, :, 1::2]
    torch.testing.assert_close(y[..., 0::2], x1 * c - x2 * s_, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y[..., 1::2], x1 * s_ + x2 * c, rtol=1e-6, atol=1e-6)
    pair_norm = lambda z: z.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pair_norm(y), pair_norm(x))
    assert torch.equal(y[:, 0], x[:, 0])


def test_attention_backends_agree():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 300, 16, generator=g) for _ in range(3))
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, 250:] = False
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(attention(q, k, v, mask), ref)
    previous = set_attention_backend("cpu_lowp")
    try:
        assert get_attention_backend() == "cpu_lowp"
        low = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
        assert low.dtype == torch.bfloat16
        assert rel_err(low.float(), ref) < 3e-2
        assert rel_err(attention(q, k, v, mask), ref) < 1e-5
    finally:
        set_attention_backend(previous)
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend("nope")
    with pytest.raises(ValueError, match="bool tensor of shape"):
        attention(q, k, v, mask[:, :10])


def test_linear_fast_path_matches_reference():
    layer = torch.nn.Linear(48, 80)
    x = torch.randn(3, 7, 48)
    ref = F.gelu(F.linear(x, layer.weight, layer.bias), approximate="tanh")
    with torch.inference_mode():
        fast = linear(x, layer, gelu_tanh=True)
        plain = linear(x, layer)
    assert rel_err(fast, ref) < 1e-5
    assert rel_err(plain, F.linear(x, layer.weight, layer.bias)) < 1e-5
    out = linear(x.requires_grad_(), layer, gelu_tanh=True)  # autograd path
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_refiner_starts_as_the_identity_and_then_sharpens_per_pixel(tmp_path):
    """refiner_dim > 0: a fresh refiner adds exactly zero (its last conv is zero), so the model equals
    the head's output; trained weights change the output pixel by pixel (not per patch), save/load
    round-trips, gradients reach it, and the per-frame noise level is fed in."""
    base = tiny_model(seed=3, patch_size=(1, 2, 2), prediction="x0")
    ref = VideoDiT(dit_config({**_tiny_dict(), "patch_size": (1, 2, 2), "prediction": "x0",
                               "refiner_dim": 8, "refiner_layers": 3, "refiner_features": 4}))  # fmt: skip
    # Copy the shared weights; the head's first C_out channels per pixel are the base head's.
    sd = base.state_dict()
    own = ref.state_dict()
    for k, v in sd.items():
        if k.startswith("proj_out"):
            pv = base.config.patch_volume
            ov = own[k].view(pv, IN_CH + 4, *own[k].shape[1:]).clone()
            ov[:, :IN_CH] = v.view(pv, IN_CH, *v.shape[1:])
            own[k] = ov.view_as(own[k])
        else:
            own[k] = v
    ref.load_state_dict(own)
    ref.eval()
    x, t, ctx = inputs(2, 3, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(ref(x, t, ctx), base(x, t, ctx))
    randomise_(ref.refiner, 9)
    with torch.no_grad():
        a = ref(x, t, ctx)
        per_frame = ref(x, torch.stack([t, t * 0.5], dim=1).repeat_interleave(2, 1)[:, :3], ctx)
    assert not torch.allclose(a, base(x, t, ctx).detach())
    assert not torch.allclose(a, per_frame)
    ref.save_pretrained(tmp_path / "dit")
    again = VideoDiT.from_pretrained(tmp_path / "dit").eval()
    with torch.no_grad():
        assert torch.equal(again(x, t, ctx), a)
    ref.train()
    ref(x, t, ctx).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ref.refiner.parameters())


def test_refiner_config_errors():
    with pytest.raises(ConfigError, match="refiner_layers"):
        dit_config({**_tiny_dict(), "refiner_dim": 8, "refiner_layers": 1})
    with pytest.raises(ConfigError, match="refiner_dim"):
        dit_config({**_tiny_dict(), "refiner_dim": -1})


def test_zero_cross_attn_starts_the_text_path_at_zero():
    """zero_cross_attn: a fresh model's output does not depend on the prompt (the output projections
    of every cross-attention are zero), yet those projections get gradients on the first step."""
    model = VideoDiT(dit_config({**_tiny_dict(), "zero_cross_attn": True}))
    torch.nn.init.normal_(model.proj_out.weight, std=0.1)  # a non-zero head, to see the output
    x, t, ctx = inputs(2, 2, 4, 4)
    other = torch.randn(ctx.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), model(x, t, other))
    model(x, t, ctx).square().mean().backward()
    assert all(blk.cross_attn.out.weight.grad.abs().sum() > 0 for blk in model.blocks)
    default = VideoDiT(dit_config(_tiny_dict()))
    assert all(blk.cross_attn.out.weight.abs().sum() > 0 for blk in default.blocks)


def _unet_dict(**kw):
    return {**_tiny_dict(), "patch_size": (2, 4, 4), "prediction": "x0", "pooled_text": True,
            "unet_dims": (4, 6, 8), **kw}  # fmt: skip


def test_unet_path_shapes_start_and_per_pixel_output(tmp_path):
    """unet_dims: tokens are cut from the deepest conv level (patch_size / 4 here), a fresh model
    predicts x0 = 0 (its last conv is zero), trained weights give per-pixel (not per-patch) output
    through the skip connections, per-frame noise levels reach the conv levels, save/load round-trips,
    and every parameter gets a gradient."""
    cfg = dit_config(_unet_dict())
    assert cfg.token_patch == (2, 1, 1) and cfg.token_in_channels == 8
    fresh = VideoDiT(cfg).eval()
    x, t, ctx = inputs(2, 4, 8, 12)
    with torch.no_grad():
        v = fresh(x, t, ctx)
    assert v.shape == x.shape
    s = (t / 1000).clamp_min(cfg.x0_min_s).view(2, 1, 1, 1, 1)
    torch.testing.assert_close(v, x / s)  # x0_hat = 0

    model = tiny_model(seed=4, **_unet_dict())
    with torch.no_grad():
        a = model(x, t, ctx)
        b = model(x, t, ctx)
        per_frame = model(x, t[:, None].repeat(1, 4) * torch.tensor([1.0, 0.5, 1.0, 0.5]), ctx)
        x2 = x.clone()
        x2[:, :, :, 0, 0] += 1.0  # one pixel of the input
        c = model(x2, t, ctx)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    # frames 0 and 2 share their token group's time (the max) with frames 1 and 3, but their conv
    # levels see their own noise level, so every frame changes
    assert all(not torch.allclose(a[:, :, i], per_frame[:, :, i]) for i in range(4))
    x0a, x0c = x - s * a, x2 - s * c
    d = (x0a - x0c).abs().amax(dim=(0, 1, 2))  # (H, W) change of the predicted x0
    assert d[0, 0] > 0 and not torch.allclose(d[:4, :4], d[0, 0].expand(4, 4))  # not patch-constant
    model.save_pretrained(tmp_path / "dit")
    again = VideoDiT.from_pretrained(tmp_path / "dit").eval()
    with torch.no_grad():
        assert torch.equal(again(x, t, ctx), a)
    model.train()
    model(x, t, ctx).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_unet_config_errors():
    with pytest.raises(ConfigError, match="spatial patch size"):
        dit_config(_unet_dict(patch_size=(1, 2, 2)))
    with pytest.raises(ConfigError, match="unet_dims must be"):
        dit_config(_unet_dict(unet_dims=(8,)))
    with pytest.raises(ConfigError, match="unet_dims must be"):
        dit_config(_unet_dict(unet_dims=(8, 0)))
    with pytest.raises(ConfigError, match="not both"):
        dit_config(_unet_dict(refiner_dim=4))


def test_token_conv_starts_at_zero_and_is_a_local_spacetime_convolution(tmp_path):
    """conv_kernel: a fresh token convolution adds nothing (the model equals the same weights without
    it); with attention silenced, changing one input patch changes only the outputs within the
    convolutions' reach (1 token per layer along each of frames / rows / columns), so the tokens are
    laid out on the right grid; checkpointing, save/load and gradients work."""
    plain = tiny_model(seed=5, patch_size=(1, 1, 1))
    conv = VideoDiT(dit_config({**_tiny_dict(), "patch_size": (1, 1, 1), "conv_kernel": 3})).eval()
    missing, unexpected = conv.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("token_conv" in k for k in missing)
    x, t, ctx = inputs(2, 6, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, t, ctx), plain(x, t, ctx), rtol=0, atol=0)

    model = tiny_model(seed=6, patch_size=(1, 1, 1), conv_kernel=3)
    with torch.no_grad():
        for blk in model.blocks:  # tokens now meet only through the convolutions
            blk.self_attn.out.weight.zero_()
            blk.cross_attn.out.weight.zero_()
        x2 = x.clone()
        x2[:, :, 1, 2, 3] += 1.0
        d = (model(x2, t, ctx) - model(x, t, ctx)).abs().amax(dim=(0, 1))  # (F, H, W)
    reach = torch.zeros_like(d, dtype=torch.bool)
    reach[0:4, 0:5, 1:6] = True  # 2 layers: +-2 around (1, 2, 3), clipped to the grid
    assert (d[reach] > 0).all() and (d[~reach] == 0).all()

    model.save_pretrained(tmp_path / "dit")
    again = VideoDiT.from_pretrained(tmp_path / "dit").eval()
    with torch.no_grad():
        assert torch.equal(again(x, t, ctx), model(x, t, ctx))
    model.train()
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        model(x, t, ctx).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])
    assert all(b.token_conv.weight.grad.abs().sum() > 0 for b in model.blocks)


@pytest.mark.parametrize("grid,k", [((4, 4, 4), 3), ((3, 2, 5), 3), ((2, 3, 4), 5), ((1, 1, 1), 3)])
def test_dense_token_conv_equals_conv3d(grid, k, monkeypatch):
    """The dense per-channel-matrix form of the depthwise token convolution is F.conv3d with zero
    padding (values and gradients), and grids above the dense limit fall back to F.conv3d."""
    import tubelet.models.layers as layers

    torch.manual_seed(0)
    b, d, n = 3, 6, grid[0] * grid[1] * grid[2]
    conv = torch.nn.Conv3d(d, d, k, padding=k // 2, groups=d).double()
    x = torch.randn(b, n, d, dtype=torch.float64)

    def reference(x):
        g = x.reshape(b, *grid, d).permute(0, 4, 1, 2, 3)
        return conv(g).permute(0, 2, 3, 4, 1).reshape(b, n, d)

    for limit in (256, 0):  # dense, then the conv3d fallback
        monkeypatch.setattr(layers, "TOKEN_CONV_DENSE_MAX_TOKENS", limit)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = reference(xa)
        yb = depthwise_conv3d_tokens(xb, conv.weight, conv.bias, grid)
        torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
        gy = torch.randn_like(ya)
        ga = torch.autograd.grad(ya, [xa, conv.weight, conv.bias], gy)
        gb = torch.autograd.grad(yb, [xb, conv.weight, conv.bias], gy)
        for u, v in zip(ga, gb):
            torch.testing.assert_close(v, u, rtol=1e-10, atol=1e-12)


def test_token_conv_config_errors():
    for bad in (2, -1, True, 1.5):
        with pytest.raises(ConfigError, match="conv_kernel"):
            dit_config({**_tiny_dict(), "conv_kernel": bad})

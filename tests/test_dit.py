"""VideoDiT: numerical equality with diffusers' WanTransformer3DModel, conversion, and behaviour."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tubelet.convert.wan_transformer import convert_transformer_state_dict, dit_config_from_diffusers
from tubelet.diffusion import Cond
from tubelet.errors import ConfigError, ConversionError, ModelLoadError
from tubelet.models.dit import DIT_PRESETS, DiTConfig, VideoDiT, dit_config
from tubelet.models.hub import load_safetensors
from tubelet.models.layers import (
    apply_rope,
    attention,
    attention_backends,
    depthwise_conv3d_tokens,
    rope_angles_3d,
    rope_freqs,
    set_attention_backend,
    timestep_embedding,
)
from tubelet.train.parallel import apply_activation_checkpointing, blocks_of

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5  # relative error: max|a - b| / max|b|
IN_CH, TEXT_DIM = 8, 32


def cond(ctx: torch.Tensor, mask: torch.Tensor | None = None) -> Cond:
    """The conditioning of a text-to-video call: text states (B, L, D) and their mask."""
    return Cond(context=ctx, context_mask=mask)


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
        got = model(x, t, cond(ctx))
    assert got.shape == x.shape
    assert rel_err(got, expected) <= TOL


def test_matches_diffusers_with_autograd_paths(pair):
    """The training code path (autograd on: F.linear, SDPA) agrees as well."""
    ref, model = pair
    x, t, ctx = inputs(2, 3, 12, 20, seed=3)
    with torch.no_grad():
        expected = ref(x, t, ctx).sample
    got = model(x.requires_grad_(), t, cond(ctx))
    assert rel_err(got.detach(), expected) <= TOL


@pytest.mark.parametrize("patch_size,out_channels", [((2, 2, 2), IN_CH), ((1, 2, 2), 4)])
def test_matches_diffusers_other_patch_and_channels(patch_size, out_channels):
    ref = make_reference(patch_size=patch_size, out_channels=out_channels, seed=5)
    model = convert(ref)
    x, t, ctx = inputs(2, 4, 8, 12, seed=1)
    with torch.no_grad():
        expected = ref(x, t, ctx).sample
        got = model(x, t, cond(ctx))
    assert got.shape == (2, out_channels, 4, 8, 12)
    assert rel_err(got, expected) <= TOL


def test_per_frame_timesteps_match_diffusers_per_token(pair):
    """t of shape (B, F') equals diffusers given the same t repeated for every token of a frame."""
    ref, model = pair
    x, _, ctx = inputs(2, 3, 12, 20, seed=2)
    t = torch.tensor([[0.0, 250.0, 999.0], [500.0, 10.0, 730.5]])
    with torch.no_grad():
        expected = ref(x, t.repeat_interleave(6 * 10, dim=1), ctx).sample
        got = model(x, t, cond(ctx))
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
        assert rel_err(model(x, t, cond(ctx)), ref(x, t, ctx).sample) <= TOL


def test_bfloat16_close_to_float32(pair):
    """bf16 (incl. the CPU low-precision attention route, N >= 256 tokens) stays near fp32."""
    ref, model = pair
    x, t, ctx = inputs(1, 1, 32, 32, seed=6)  # 256 tokens
    with torch.inference_mode():
        expected = ref(x, t, ctx).sample
        got = VideoDiT(model.config).eval()
        got.load_state_dict(model.state_dict())
        out = got.to(torch.bfloat16)(x.bfloat16(), t, cond(ctx.bfloat16()))
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
            a, b2 = model(x, t, cond(ctx)), model(x, t, cond(ctx))
        assert a.shape == x.shape and a.dtype == x.dtype
        assert torch.isfinite(a).all()
        assert torch.equal(a, b2)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(seed=1)
    x, t, ctx = inputs(2, 3, 4, 6)
    with torch.no_grad():
        before = model(x, t, cond(ctx))
    model.save_pretrained(tmp_path / "dit")
    loaded = VideoDiT.from_pretrained(tmp_path / "dit")
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(x, t, cond(ctx)), before)


def test_fresh_model_predicts_zero_velocity():
    """Wan's initialisation zeroes the output projection; the Xavier init covers each fused q/k/v part."""
    model = VideoDiT(dit_config(_tiny_dict())).eval()
    x, t, ctx = inputs(1, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(model(x, t, cond(ctx)), torch.zeros_like(x))
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
        a = model(x, t, cond(ctx, mask))
        assert rel_err(model(x, t, cond(padded, mask)), a) <= TOL
        model.pooled_embed.fc2.weight.zero_()
        model.pooled_embed.fc2.bias.zero_()
        assert rel_err(model(x, t, cond(ctx, mask)), a) > 1e-3  # the pooled path mattered
    plain = tiny_model(seed=7)
    assert plain.pooled_embed is None and not any("pooled" in n for n in plain.state_dict())


@pytest.mark.parametrize("pooled", [False, True])
def test_gradients_reach_every_parameter(pooled):
    model = tiny_model(seed=2, pooled_text=pooled).train()
    x, t, ctx = inputs(2, 2, 4, 4)
    model(x, t, cond(ctx)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_same_gradients():
    """`apply_activation_checkpointing` (applied from outside the model) recomputes each block in
    the backward pass and gives the same gradients; names and state dict are unchanged."""
    model = tiny_model(seed=3).train()
    x, t, ctx = inputs(2, 3, 4, 4)
    calls = []
    model.blocks[0].self_attn.register_forward_hook(lambda *_: calls.append(1))

    def grads():
        model.zero_grad()
        calls.clear()
        xr = x.clone().requires_grad_()
        model(xr, t, cond(ctx)).square().mean().backward()
        return [xr.grad] + [p.grad.clone() for p in model.parameters()]

    keys = list(model.state_dict())
    plain = grads()
    assert len(calls) == 1
    assert apply_activation_checkpointing(model) is model
    apply_activation_checkpointing(model)  # idempotent
    ckpt = grads()
    assert len(calls) == 2  # the block's forward ran again in the backward pass
    assert list(model.state_dict()) == keys
    assert all(type(b).__name__ == "CheckpointedDiTBlock" for b in model.blocks)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with torch.no_grad():  # no autograd: no checkpointing, the plain forward
        calls.clear()
        model(x, t, cond(ctx))
        assert len(calls) == 1


def test_stages_compose_to_forward():
    """forward is embed -> every declared block -> head; the stages are public (step caches,
    adapters, parallelism work between them) and the tokens travel as (B, T, S, D)."""
    model = tiny_model(seed=8, patch_size=(1, 2, 2), pooled_text=True)
    assert VideoDiT.repeated_blocks == ("blocks",)
    assert blocks_of(model) == list(model.blocks)
    x, t, ctx = inputs(2, 3, 4, 6, length=5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    per_frame = torch.tensor([[10.0, 500.0, 990.0], [300.0, 300.0, 0.0]])
    for tt, groups in ((t, 1), (per_frame, 3)):
        c = cond(ctx, mask)
        with torch.no_grad():
            tokens, state = model.embed(x, tt, c)
            assert tokens.shape == (2, groups, 3 * 2 * 3 // groups, 32)
            assert state.grid == (3, 2, 3) and state.shape == tuple(x.shape)
            assert state.context.shape == (2, 5, 32) and state.context_mask is mask
            assert state.time_mod.shape == (2, groups, 6, 32) and state.temb.shape == (2, groups, 32)
            h = tokens
            for block in model.blocks:
                h = block(h, state)
                assert h.shape == tokens.shape
            staged = model.head(h, state)
            assert torch.equal(staged, model(x, tt, c))


def test_text_to_video_model_encodes_token_ids():
    """TextToVideoModel: a Cond with text_ids is encoded by the jointly trained encoder (the DiT
    gets the states); a Cond with context goes straight to the DiT."""
    from tubelet.models.text import BYTE_TEXT_PRESETS, ByteTextEncoder
    from tubelet.train.tasks import TextToVideoModel

    torch.manual_seed(0)
    text = ByteTextEncoder(BYTE_TEXT_PRESETS["tiny"]).eval()
    model = tiny_model(seed=9, text_dim=text.dim)
    wrapped = TextToVideoModel(model, text)
    x, t, _ = inputs(2, 2, 4, 4)
    ids = torch.randint(1, 200, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        ctx = text(ids, mask)
        want = model(x, t, cond(ctx, mask))
        assert torch.equal(wrapped(x, t, Cond(text_ids=ids, context_mask=mask)), want)
        assert torch.equal(wrapped(x, t, cond(ctx, mask)), want)
    with pytest.raises(ValueError, match="no jointly trained text encoder"):
        TextToVideoModel(model, None)(x, t, Cond(text_ids=ids, context_mask=mask))


def test_old_config_json_with_removed_fields_loads_at_inert_defaults(tmp_path):
    """A model saved before the removed DiT experiments still loads when its config.json carries
    their "off" values; a config that used one (x0 prediction, a U-path, ...) is a clear error."""
    model = tiny_model(seed=2)
    model.save_pretrained(tmp_path / "dit")
    path = tmp_path / "dit" / "config.json"
    raw = json.loads(path.read_text())
    old = {**raw, "prediction": "velocity", "x0_min_s": 0.05, "zero_cross_attn": False, "refiner_dim": 0,
           "refiner_layers": 3, "refiner_features": 8, "unet_dims": []}  # fmt: skip
    path.write_text(json.dumps(old))
    loaded = VideoDiT.from_pretrained(tmp_path / "dit")
    assert loaded.config == model.config
    x, t, ctx = inputs(1, 2, 4, 4)
    with torch.no_grad():
        assert rel_err(loaded(x, t, cond(ctx)), model(x, t, cond(ctx))) <= TOL
    for key, value in (
        ("prediction", "x0"),
        ("unet_dims", [4, 8]),
        ("refiner_dim", 8),
        ("zero_cross_attn", True),
    ):
        path.write_text(json.dumps({**raw, "prediction": "velocity", "unet_dims": [], key: value}))
        with pytest.raises((ModelLoadError, ConfigError), match=key):
            VideoDiT.from_pretrained(tmp_path / "dit")


@pytest.mark.parametrize("conv", [0, 3])
def test_training_after_inference_mode(conv: int):
    """Tables cached during an inference-mode call (RoPE, the token convolution's shift matrices)
    do not break a later training step."""
    model = tiny_model(seed=3, conv_kernel=conv)
    x, t, ctx = inputs(2, 2, 4, 4)
    with torch.inference_mode():
        a = model(x, t, cond(ctx))
    model.train()
    out = model(x, t, cond(ctx))
    out.square().mean().backward()
    assert torch.equal(out.detach(), a)
    assert all(p.grad is not None for p in model.parameters())


def test_per_frame_t_equal_values_equals_scalar_t():
    model = tiny_model(seed=4)
    x, _, ctx = inputs(2, 5, 4, 6)
    t = torch.tensor([120.0, 860.0])
    with torch.no_grad():
        scalar = model(x, t, cond(ctx))
        per_frame = model(x, t[:, None].expand(2, 5), cond(ctx))
        scalar_0d = model(x[:1], torch.tensor(120.0), cond(ctx[:1]))
    assert rel_err(per_frame, scalar) <= TOL
    assert rel_err(scalar_0d, scalar[:1]) <= TOL


def test_per_frame_t_conditions_each_frame():
    """Changing one frame's timestep changes the prediction (the frames interact through attention)."""
    model = tiny_model(seed=4)
    x, _, ctx = inputs(1, 3, 4, 4)
    with torch.no_grad():
        a = model(x, torch.tensor([[500.0, 500.0, 500.0]]), cond(ctx))
        b = model(x, torch.tensor([[0.0, 500.0, 500.0]]), cond(ctx))
    assert not torch.allclose(a, b)


def test_per_frame_t_with_temporal_patches_uses_each_token_frames_largest_t():
    """With pt > 1, t may come per input frame (B, F): a token frame takes its frames' largest t."""
    model = tiny_model(seed=5, patch_size=(2, 2, 2))
    x, _, ctx = inputs(2, 4, 4, 4)
    per_frame = torch.tensor([[0.0, 300.0, 0.0, 0.0], [700.0, 700.0, 200.0, 100.0]])
    per_token_frame = torch.tensor([[300.0, 0.0], [700.0, 200.0]])
    with torch.no_grad():
        assert torch.equal(model(x, per_frame, cond(ctx)), model(x, per_token_frame, cond(ctx)))


def test_context_mask_hides_tokens():
    model = tiny_model(seed=5)
    x, t, ctx = inputs(2, 2, 4, 6, length=9)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 7:] = False
    with torch.no_grad():
        masked = model(x, t, cond(ctx, mask))
        scrambled = ctx.clone()
        scrambled[~mask] = torch.randn(int((~mask).sum()), TEXT_DIM) * 10
        assert rel_err(model(x, t, cond(scrambled, mask)), masked) <= TOL
        # Same as giving each sample only its real tokens.
        for i, n in enumerate((4, 7)):
            alone = model(x[i : i + 1], t[i : i + 1], cond(ctx[i : i + 1, :n]))
            assert rel_err(masked[i : i + 1], alone) <= TOL
        # An all-True mask is the same as no mask; the masked tokens did matter without a mask.
        full = torch.ones(2, 9, dtype=torch.bool)
        assert rel_err(model(x, t, cond(ctx, full)), model(x, t, cond(ctx))) <= TOL
        assert rel_err(model(x, t, cond(scrambled)), masked) > 1e-2


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
        ((2, IN_CH, 2, 4, 4), (2,), (2, 5, TEXT_DIM), "short", "context_mask has shape"),  # from Cond
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
        model(torch.randn(x_shape), torch.rand(t_shape) * 1000, cond(torch.randn(ctx_shape), m))


def test_conditioning_the_dit_cannot_use_is_an_error():
    """The DiT reads Cond.context / context_mask; token ids (a wrapper's job), boxes and image
    embeddings are clear errors, as is a bare tensor where the Cond goes."""
    model = tiny_model()
    x, t, ctx = inputs(2, 2, 4, 4)
    with pytest.raises(ValueError, match=r"encoded text \(Cond.context\)"):
        model(x, t, Cond(text_ids=torch.zeros(2, 5, dtype=torch.long)))
    with pytest.raises(ValueError, match="box or image-embedding"):
        model(x, t, Cond(context=ctx, boxes=[[]] * 2))
    with pytest.raises(ValueError, match="box or image-embedding"):
        model(x, t, Cond(context=ctx, image_embeds=torch.zeros(2, 3, 4)))
    with pytest.raises(TypeError, match="Cond"):
        model(x, t, ctx)
    # Known frames are the objective's / samplers' business: the DiT ignores them.
    known = Cond(context=ctx, known=torch.randn(x.shape), known_mask=torch.ones(2, 2, dtype=torch.bool))
    with torch.no_grad():
        assert torch.equal(model(x, t, known), model(x, t, cond(ctx)))


def test_presets_build_with_expected_sizes():
    for name in ("tiny", "small"):
        model = VideoDiT(dit_config(name))
        x = torch.randn(1, model.config.in_channels, 2, 4, 4)
        ctx = torch.randn(1, 3, model.config.text_dim)
        with torch.no_grad():
            assert model(x, torch.tensor([10.0]), cond(ctx)).shape == x.shape
    counts = {}
    for name in ("wan2.1-1.3b", "wan2.1-14b"):
        with torch.device("meta"):
            counts[name] = VideoDiT(dit_config(name)).num_parameters()
    assert 1.2e9 < counts["wan2.1-1.3b"] < 1.5e9
    assert 1.3e10 < counts["wan2.1-14b"] < 1.5e10
    assert dit_config("wan2.1-14b") == DIT_PRESETS["wan2.1-14b"]
    assert dit_config("wan2.1-14b") is not DIT_PRESETS["wan2.1-14b"]


def test_config_errors():
    with pytest.raises(ConfigError, match=r"(?i)unknown dit preset"):
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
    # Fields of removed experiments are unknown keys of a config dict (old model dirs: see
    # test_old_config_json_with_removed_fields_loads_at_inert_defaults).
    for key, value in (("prediction", "velocity"), ("unet_dims", []), ("refiner_dim", 0)):
        with pytest.raises(ConfigError, match="unknown key"):
            dit_config({**_tiny_dict(), key: value})


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
    low = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, "cpu_lowp")
    assert low.dtype == torch.bfloat16
    assert rel_err(low.float(), ref) < 3e-2
    assert rel_err(attention(q, k, v, mask, "cpu_lowp"), ref) < 1e-5
    assert {"auto", "sdpa", "cpu_lowp"} <= set(attention_backends())
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend(tiny_model(), "nope")
    with pytest.raises(ValueError, match="bool tensor of shape"):
        attention(q, k, v, mask[:, :10])


def test_attention_backend_is_chosen_per_model_and_kind():
    """set_attention_backend(model, name, kind=...) sets the backend of that model's self- or
    cross-attention modules only; another model in the process keeps its own."""
    a, b = tiny_model(seed=1), tiny_model(seed=1)
    assert set_attention_backend(a, "cpu_lowp", kind="self") is a
    assert all(blk.self_attn.attention_backend == "cpu_lowp" for blk in a.blocks)
    assert all(blk.cross_attn.attention_backend == "auto" for blk in a.blocks)
    assert all(m.attention_backend == "auto" for blk in b.blocks for m in (blk.self_attn, blk.cross_attn))
    set_attention_backend(a, "sdpa", kind="cross")
    assert all(blk.cross_attn.attention_backend == "sdpa" for blk in a.blocks)
    x, t, ctx = inputs(2, 2, 4, 4)
    with torch.no_grad():
        assert rel_err(a(x, t, cond(ctx)), b(x, t, cond(ctx))) < 1e-5  # fp32: the same attention
    with pytest.raises(ValueError, match="kind"):
        set_attention_backend(a, "sdpa", kind="both")


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
        torch.testing.assert_close(conv(x, t, cond(ctx)), plain(x, t, cond(ctx)), rtol=0, atol=0)

    model = tiny_model(seed=6, patch_size=(1, 1, 1), conv_kernel=3)
    with torch.no_grad():
        for blk in model.blocks:  # tokens now meet only through the convolutions
            blk.self_attn.out.weight.zero_()
            blk.cross_attn.out.weight.zero_()
        x2 = x.clone()
        x2[:, :, 1, 2, 3] += 1.0
        d = (model(x2, t, cond(ctx)) - model(x, t, cond(ctx))).abs().amax(dim=(0, 1))  # (F, H, W)
    reach = torch.zeros_like(d, dtype=torch.bool)
    reach[0:4, 0:5, 1:6] = True  # 2 layers: +-2 around (1, 2, 3), clipped to the grid
    assert (d[reach] > 0).all() and (d[~reach] == 0).all()

    model.save_pretrained(tmp_path / "dit")
    again = VideoDiT.from_pretrained(tmp_path / "dit").eval()
    with torch.no_grad():
        assert torch.equal(again(x, t, cond(ctx)), model(x, t, cond(ctx)))
    model.train()
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        if ckpt:
            apply_activation_checkpointing(model)
        model(x, t, cond(ctx)).square().mean().backward()
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

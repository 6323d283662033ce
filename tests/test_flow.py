"""The rectified-flow objective: path, target, shift, timestep sampling, task mix, loss masking."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from tubelet.config import config_from_dict, config_to_dict
from tubelet.diffusion import Cond
from tubelet.diffusion.flow import (
    FlowConfig,
    drop_captions,
    effective_shift,
    flow_matching_loss,
    interpolate,
    resolution_shift,
    sample_known_frames,
    sample_timesteps,
    shift_sigmas,
    velocity_target,
)
from tubelet.errors import ConfigError

B, C, F, H, W = 3, 4, 5, 6, 7


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ctx(b: int = B) -> torch.Tensor:
    return torch.randn(b, 6, 8, generator=_gen(99))


def _cond(b: int = B, known_mask: torch.Tensor | None = None) -> Cond:
    """Text states (and optionally known frames) as the objective gets them."""
    return Cond(context=_ctx(b), known_mask=known_mask)


# --------------------------------------------------------------------------------------------- path


def test_interpolate_endpoints_and_per_frame_levels():
    x0, noise = torch.randn(2, B, C, F, H, W, generator=_gen()).unbind(0)
    assert torch.equal(interpolate(x0, noise, 0.0), x0)
    assert torch.equal(interpolate(x0, noise, 1.0), noise)
    assert torch.equal(interpolate(x0, noise, torch.zeros(B)), x0)
    assert torch.equal(interpolate(x0, noise, torch.ones(B)), noise)
    s = torch.tensor([0.0, 0.25, 1.0])
    out = interpolate(x0, noise, s)
    assert torch.allclose(out[1], 0.75 * x0[1] + 0.25 * noise[1])
    # One level per frame: frame 0 clean, the others at s=0.5.
    sf = torch.full((B, F), 0.5)
    sf[:, 0] = 0.0
    out = interpolate(x0, noise, sf)
    assert torch.equal(out[:, :, 0], x0[:, :, 0])
    assert torch.allclose(out[:, :, 1:], 0.5 * (x0[:, :, 1:] + noise[:, :, 1:]))
    with pytest.raises(ValueError, match=r"\(B, F\)"):
        interpolate(x0, noise, torch.zeros(B, F + 1))
    with pytest.raises(ValueError, match="same shape"):
        interpolate(x0, noise[:, :1], 0.5)


def test_velocity_target_is_path_derivative():
    x0, noise = torch.randn(2, B, C, F, H, W, generator=_gen(1), dtype=torch.float64).unbind(0)
    v = velocity_target(x0, noise)
    assert torch.equal(v, noise - x0)
    for s in (0.1, 0.5, 0.9):
        d = 1e-6
        fd = (interpolate(x0, noise, s + d) - interpolate(x0, noise, s - d)) / (2 * d)
        assert torch.allclose(fd, v, atol=1e-7)


# -------------------------------------------------------------------------------------------- shift


def test_shift_formula_properties():
    s = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert torch.equal(shift_sigmas(s, 1.0), s)
    for shift in (0.3, 2.0, 3.0, 7.5):
        out = shift_sigmas(s, shift)
        assert out[0] == 0.0 and out[-1].item() == pytest.approx(1.0, abs=1e-15)
        assert (out[1:] > out[:-1]).all()
        assert ((out >= s) if shift > 1 else (out <= s)).all()
    assert shift_sigmas(0.5, 3.0) == pytest.approx(0.75)
    # Composition: shifting by a then b equals shifting by a*b.
    assert torch.allclose(shift_sigmas(shift_sigmas(s, 2.0), 3.0), shift_sigmas(s, 6.0))
    with pytest.raises(ValueError):
        shift_sigmas(s, 0.0)


def test_resolution_shift_grows_with_tokens_and_is_clamped():
    cfg = FlowConfig()
    assert resolution_shift(cfg.base_tokens, cfg) == pytest.approx(math.exp(cfg.base_shift))
    assert resolution_shift(cfg.max_tokens, cfg) == pytest.approx(math.exp(cfg.max_shift))
    tokens = [256, 512, 1024, 2048, 3000, 4096]
    shifts = [resolution_shift(n, cfg) for n in tokens]
    assert all(a < b for a, b in itertools.pairwise(shifts))
    mid = (cfg.base_tokens + cfg.max_tokens) // 2
    assert math.log(resolution_shift(mid, cfg)) == pytest.approx((cfg.base_shift + cfg.max_shift) / 2)
    assert resolution_shift(10, cfg) == pytest.approx(math.exp(cfg.base_shift))
    assert resolution_shift(10**6, cfg) == pytest.approx(math.exp(cfg.max_shift))
    assert effective_shift(FlowConfig(shift=5.0), 10**6) == 5.0
    assert effective_shift(cfg, 2048) == resolution_shift(2048, cfg)
    with pytest.raises(ValueError, match="num_tokens"):
        effective_shift(cfg, None)


# ----------------------------------------------------------------------------------- timesteps


def test_logit_normal_statistics():
    for mean, std in ((0.0, 1.0), (0.5, 0.8)):
        cfg = FlowConfig(logit_mean=mean, logit_std=std, shift=1.0)
        s = sample_timesteps(200_000, cfg, _gen(3))
        assert s.dtype == torch.float32 and s.shape == (200_000,)
        s = s.double()
        assert (s > 0).all() and (s < 1).all()
        z = torch.log(s) - torch.log1p(-s)
        assert z.mean().item() == pytest.approx(mean, abs=0.01)
        assert z.std().item() == pytest.approx(std, abs=0.01)


def test_uniform_and_shifted_statistics():
    s = sample_timesteps(200_000, FlowConfig(t_sampling="uniform", shift=1.0), _gen(4)).double()
    assert (s > 0).all() and (s < 1).all()
    assert s.mean().item() == pytest.approx(0.5, abs=0.005)
    assert s.var().item() == pytest.approx(1 / 12, abs=0.002)
    # A shift moves the median (a quantile maps through the monotone shift).
    s3 = sample_timesteps(200_000, FlowConfig(t_sampling="uniform", shift=3.0), _gen(4)).double()
    assert s3.median().item() == pytest.approx(0.75, abs=0.005)
    # Resolution-aware: more tokens -> higher noise levels on average.
    cfg = FlowConfig()
    lo = sample_timesteps(50_000, cfg, _gen(5), num_tokens=256).mean()
    hi = sample_timesteps(50_000, cfg, _gen(5), num_tokens=4096).mean()
    assert hi > lo + 0.05


def test_timesteps_are_deterministic_per_seed():
    cfg = FlowConfig(shift=2.0)
    assert torch.equal(sample_timesteps(16, cfg, _gen(7)), sample_timesteps(16, cfg, _gen(7)))
    assert not torch.equal(sample_timesteps(16, cfg, _gen(7)), sample_timesteps(16, cfg, _gen(8)))


# ------------------------------------------------------------------------------ captions and tasks


def test_caption_dropout_rate():
    texts = [f"a red square moves left {i}" for i in range(20_000)]
    out = drop_captions(texts, 0.3, _gen(11))
    dropped = sum(o == "" for o in out)
    assert dropped / len(texts) == pytest.approx(0.3, abs=0.015)
    assert all(o in ("", t) for o, t in zip(out, texts))
    assert drop_captions(texts[:50], 0.0, _gen()) == texts[:50]
    assert drop_captions(texts[:50], 1.0, _gen()) == [""] * 50
    assert drop_captions([], 0.5) == []
    assert out == drop_captions(texts, 0.3, _gen(11))
    with pytest.raises(ValueError):
        drop_captions(texts, 1.5)


def test_task_mix_probabilities():
    cfg = FlowConfig(p_i2v=0.2, p_first_last=0.1, p_extend_forward=0.21, p_extend_backward=0.28)
    n, f = 60_000, 8
    known = sample_known_frames(n, f, cfg, _gen(12))
    assert known.shape == (n, f) and known.dtype == torch.bool
    assert (~known).any(dim=1).all()  # always something to predict
    counts = known.sum(dim=1)
    idx = torch.arange(f)
    prefix = (known == (idx[None] < counts[:, None])).all(dim=1) & (counts > 0)
    suffix = (known == (idx[None] >= f - counts[:, None])).all(dim=1) & (counts > 0)
    first_last = (known == ((idx == 0) | (idx == f - 1))[None]).all(dim=1)
    # Every draw is one of the patterns.
    assert ((counts == 0) | prefix | suffix | first_last).all()
    per_k = cfg.p_extend_forward / (f - 1)  # k uniform in [1, F-1]
    expected = {
        "t2v": ((counts == 0), 1 - 0.2 - 0.1 - 0.21 - 0.28),
        "first frame only (i2v or prefix k=1)": (prefix & (counts == 1), 0.2 + per_k),
        "first and last": (first_last, 0.1),
        "prefix k=3": (prefix & (counts == 3), per_k),
        "suffix k=1": (suffix & (counts == 1), cfg.p_extend_backward / (f - 1)),
        "suffix k=5": (suffix & (counts == 5), cfg.p_extend_backward / (f - 1)),
        "all prefixes k>=2": (prefix & (counts >= 2), per_k * (f - 2)),
    }
    for name, (hits, p) in expected.items():
        freq = hits.float().mean().item()
        tol = 4 * math.sqrt(p * (1 - p) / n)
        assert abs(freq - p) < tol, (name, freq, p)
    assert torch.equal(known, sample_known_frames(n, f, cfg, _gen(12)))


def test_task_mix_degenerate_frame_counts():
    cfg = FlowConfig(p_i2v=0.25, p_first_last=0.25, p_extend_forward=0.25, p_extend_backward=0.25)
    assert not sample_known_frames(100, 1, cfg, _gen()).any()  # single frame: only t2v possible
    two = sample_known_frames(2000, 2, cfg, _gen())
    assert (two.sum(dim=1) <= 1).all()  # first+last of 2 frames would leave nothing: becomes t2v
    assert two.any()
    none = sample_known_frames(
        500, 6, FlowConfig(p_i2v=0, p_first_last=0, p_extend_forward=0, p_extend_backward=0)
    )
    assert not none.any()


def test_config_validation_and_round_trip():
    cfg = FlowConfig(shift=3.0, p_i2v=0.3)
    assert config_from_dict(FlowConfig, config_to_dict(cfg)) == cfg
    assert config_from_dict(FlowConfig, {"shift": None}).shift is None
    with pytest.raises(ConfigError, match="sum to"):
        FlowConfig(p_i2v=0.6, p_first_last=0.5)
    with pytest.raises(ConfigError, match="t_sampling"):
        config_from_dict(FlowConfig, {"t_sampling": "beta"})
    with pytest.raises(ConfigError, match="caption_dropout"):
        FlowConfig(caption_dropout=1.5)
    with pytest.raises(ConfigError, match="shift"):
        FlowConfig(shift=-1.0)
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict(FlowConfig, {"shfit": 1.0})
    with pytest.raises(ConfigError, match="unknown key"):  # a removed experiment (pixel-space loss weights)
        config_from_dict(FlowConfig, {"foreground_weight": 9.0})


# --------------------------------------------------------------------------------------------- loss


class Oracle:
    """Knows x0: returns the exact target (x_s - x0) / s per frame, and `junk` where t == 0."""

    def __init__(self, x0: torch.Tensor, junk: float | None = 1e3) -> None:
        self.x0, self.junk, self.calls, self.conds = x0, junk, [], []

    def __call__(self, x, t, cond):
        self.calls.append((x.clone(), t.clone()))
        self.conds.append(cond)
        s = t.double() / 1000.0
        sb = s.view(x.shape[0], 1, -1, 1, 1) if s.dim() == 2 else s.view(-1, 1, 1, 1, 1)
        v = (x - self.x0) / sb.clamp_min(1e-12)
        if self.junk is not None:
            v = torch.where(sb == 0, torch.full_like(v, self.junk), v)
        return v


def test_known_frames_are_clean_and_excluded_from_loss():
    x0 = torch.randn(B, C, F, H, W, generator=_gen(20), dtype=torch.float64)
    known = torch.zeros(B, F, dtype=torch.bool)
    known[0, 0] = True
    known[1, :2] = True
    known[2, [0, F - 1]] = True
    model = Oracle(x0)
    cond = _cond(known_mask=known)
    loss, stats = flow_matching_loss(model, x0, cond, cfg=FlowConfig(shift=1.0), generator=_gen())
    assert loss.item() < 1e-10  # wrong only on known frames -> zero loss
    ((x_s, t),) = model.calls
    assert model.conds == [cond] and model.conds[0] is cond  # the model gets the Cond unchanged
    assert t.shape == (B, F)
    assert (t[known] == 0).all() and (t[~known] > 0).all()
    assert torch.equal(x_s.permute(0, 2, 1, 3, 4)[known], x0.permute(0, 2, 1, 3, 4)[known])
    assert stats["known_fraction"].item() == pytest.approx(known.float().mean().item())
    # Without masking the junk on the known frames is penalised.
    loss_all, _ = flow_matching_loss(
        Oracle(x0),
        x0,
        _cond(known_mask=torch.zeros(B, F, dtype=torch.bool)),
        cfg=FlowConfig(shift=1.0),
        generator=_gen(),
    )
    assert loss_all.item() < 1e-10
    # Conversely: a model right on known frames but wrong elsewhere has a positive loss.
    loss_bad, _ = flow_matching_loss(
        lambda x, t, c: torch.zeros_like(x),
        x0,
        _cond(known_mask=known),
        cfg=FlowConfig(shift=1.0),
        generator=_gen(),
    )
    assert loss_bad.item() > 0.5
    # The objective takes the known frames' values from x0: Cond.known (the samplers' input) is ignored.
    spy = Oracle(x0)
    junk = torch.full_like(x0, 7.0)
    with_known = Cond(context=_ctx(), known=junk, known_mask=known)
    loss_k, _ = flow_matching_loss(spy, x0, with_known, cfg=FlowConfig(shift=1.0), generator=_gen())
    assert loss_k.item() < 1e-10
    assert torch.equal(spy.calls[0][0], x_s)


def test_loss_value_matches_definition_and_time_shape():
    x0 = torch.randn(B, C, F, H, W, generator=_gen(21), dtype=torch.float64)
    spy = Oracle(x0, junk=None)
    loss0, stats0 = flow_matching_loss(spy, x0, _cond(), cfg=FlowConfig(shift=2.0), generator=_gen(5))
    assert loss0.item() < 1e-10
    ((x_s, t),) = spy.calls
    assert t.shape == (B,)
    assert torch.allclose(t.float(), 1000 * stats0["s"])
    # Model predicting zeros: loss = mean(target^2), target recovered from x_s and s.
    s = stats0["s"].double().view(B, 1, 1, 1, 1)
    noise = (x_s - (1 - s) * x0) / s
    loss, stats = flow_matching_loss(
        lambda x, t, c: torch.zeros_like(x), x0, _cond(), cfg=FlowConfig(shift=2.0), generator=_gen(5)
    )
    target = noise - x0
    assert loss.item() == pytest.approx(target.square().mean().item(), rel=1e-5)
    assert torch.allclose(
        stats["loss_per_sample"].double(), target.square().mean(dim=(1, 2, 3, 4)), rtol=1e-5
    )


class TinyVelocityNet(nn.Module):
    """A small conv model with the tubelet model signature."""

    def __init__(self, c: int = C, d: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv3d(c, c, 3, padding=1)
        self.t_proj = nn.Linear(1, c)
        self.c_proj = nn.Linear(d, c)

    def forward(self, x, t, cond):
        tt = t.float() / 1000.0
        if tt.dim() == 1:
            temb = self.t_proj(tt[:, None])[:, :, None, None, None]  # (B, C, 1, 1, 1)
        else:
            temb = self.t_proj(tt[..., None]).permute(0, 2, 1)[..., None, None]  # (B, C, F, 1, 1)
        cemb = self.c_proj(cond.context.mean(dim=1))[:, :, None, None, None]
        return self.conv(x) + temb + cemb


def test_gradient_flows_and_determinism():
    torch.manual_seed(0)
    net = TinyVelocityNet()
    x0 = torch.randn(B, C, F, H, W, generator=_gen(30))
    cfg = FlowConfig()
    known = sample_known_frames(
        B, F, FlowConfig(p_i2v=1.0, p_first_last=0, p_extend_forward=0, p_extend_backward=0)
    )
    loss, stats = flow_matching_loss(net, x0, _cond(known_mask=known), cfg=cfg, generator=_gen(1))
    assert loss.dim() == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    again, stats2 = flow_matching_loss(net, x0, _cond(known_mask=known), cfg=cfg, generator=_gen(1))
    assert torch.equal(loss.detach(), again.detach()) and torch.equal(stats["s"], stats2["s"])
    other, _ = flow_matching_loss(net, x0, _cond(known_mask=known), cfg=cfg, generator=_gen(2))
    assert not torch.equal(loss.detach(), other.detach())
    assert not stats["loss"].requires_grad


def test_loss_rejects_bad_shapes():
    x0 = torch.randn(B, C, F, H, W)
    net = TinyVelocityNet()
    with pytest.raises(ValueError, match=r"\(B, C, F, H, W\)"):
        flow_matching_loss(net, x0[:, :, 0], _cond(), cfg=FlowConfig())
    with pytest.raises(ValueError, match="known_mask"):
        flow_matching_loss(
            net, x0, _cond(known_mask=torch.zeros(B, F + 1, dtype=torch.bool)), cfg=FlowConfig()
        )
    with pytest.raises(ValueError, match="model returned"):
        flow_matching_loss(lambda x, t, c: x[:, :1], x0, _cond(), cfg=FlowConfig())


def test_shift_mix_draws_each_samples_shift_from_the_list():
    """shift_mix=[100, 1]: half the noise levels shifted hard towards 1, half left uniform."""
    cfg = FlowConfig(t_sampling="uniform", shift=100.0, shift_mix=[100, 1])
    s = sample_timesteps(20000, cfg, torch.Generator().manual_seed(0))
    assert s.shape == (20000,) and ((s > 0) & (s < 1)).all()
    # uniform half: P(s < 0.5) = 0.5; shifted half: P(s < 0.5) = P(u < 1/101) ~ 0.01
    assert abs(float((s < 0.5).float().mean()) - 0.5 * (0.5 + 1 / 101)) < 0.015
    assert abs(float((s > 0.99).float().mean()) - 0.5 * (0.01 + 1 - 0.99 / (100 - 99 * 0.99))) < 0.015
    again = sample_timesteps(20000, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(s, again)
    with pytest.raises(ConfigError, match="shift_mix"):
        FlowConfig(shift_mix=[])
    with pytest.raises(ConfigError, match="shift_mix"):
        FlowConfig(shift_mix=[3, 0])

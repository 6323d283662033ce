"""Samplers on velocity fields whose exact ODE solution is known, guidance batching, conditioning, SDEdit."""

from __future__ import annotations

import itertools

import pytest
import torch

from tubelet.diffusion import Cond
from tubelet.diffusion.flow import interpolate, shift_sigmas
from tubelet.diffusion.sampling import (
    SAMPLERS,
    flow_schedule,
    make_velocity_fn,
    sample_dpmpp_2m,
    sample_euler,
    sample_unipc,
    sdedit_start,
)

SHAPE = (2, 3, 4, 5, 6)  # (B, C, F, H, W)
ALL = sorted(SAMPLERS)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _s5(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) or per-frame (B, F) noise level -> broadcastable against (B, C, F, H, W)."""
    s = s.to(x.dtype)
    return s.view(x.shape[0], 1, -1, 1, 1) if s.dim() == 2 else s.view(-1, 1, 1, 1, 1)


class PointMass:
    """Data = the single point x*. On x_s = (1-s) x* + s eps the exact velocity is eps - x* = (x - x*)/s."""

    def __init__(self, target: torch.Tensor) -> None:
        self.target = target

    def __call__(self, x: torch.Tensor, s: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return (x - self.target) / _s5(s, x)


class Gaussian:
    """Data ~ N(mu, sd^2) per element. x_s ~ N((1-s) mu, (1-s)^2 sd^2 + s^2).

    The exact velocity E[eps - x0 | x_s] = -mu + (s - (1-s) sd^2) / var_s * (x - (1-s) mu) (Gaussian
    conditioning: Cov(eps - x0, x_s) = s - (1-s) sd^2). The ODE moves quantiles to quantiles, so its
    solution from s=1 is x_s = (1-s) mu + std_s * x_1 and the sample is x_0 = mu + sd * x_1.
    """

    def __init__(self, mu: torch.Tensor, sd: torch.Tensor) -> None:
        self.mu, self.sd = mu, sd

    def __call__(self, x: torch.Tensor, s: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        s = _s5(s, x)
        var = (1 - s) ** 2 * self.sd**2 + s**2
        return -self.mu + (s - (1 - s) * self.sd**2) / var * (x - (1 - s) * self.mu)

    def trajectory(self, x1: torch.Tensor, s: float) -> torch.Tensor:
        std = ((1 - s) ** 2 * self.sd**2 + s**2) ** 0.5
        return (1 - s) * self.mu + std * x1


def _gaussian(lo: float = 0.5, hi: float = 1.5) -> tuple[Gaussian, torch.Tensor]:
    g = _gen(1)
    mu = torch.randn(SHAPE[1:], generator=g, dtype=torch.float64)
    sd = lo + (hi - lo) * torch.rand(SHAPE[1:], generator=g, dtype=torch.float64)
    x1 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return Gaussian(mu, sd), x1


# -------------------------------------------------------------------------------------------- schedule


def test_flow_schedule():
    s = flow_schedule(10)
    assert s.shape == (11,) and s.dtype == torch.float32
    assert s[0] == 1.0 and s[-1] == 0.0
    assert torch.allclose(s, torch.linspace(1, 0, 11))
    s5 = flow_schedule(10, shift=5.0)
    assert s5[0] == 1.0 and s5[-1] == 0.0 and (s5[1:] < s5[:-1]).all()
    assert torch.allclose(s5, shift_sigmas(torch.linspace(1, 0, 11), 5.0))
    assert (s5[1:-1] > s[1:-1]).all()  # shift > 1 spends more steps at high noise
    with pytest.raises(ValueError):
        flow_schedule(0)


# ---------------------------------------------------------------------------------- analytic fields


def test_gaussian_velocity_matches_its_trajectory():
    field, x1 = _gaussian()
    for s in (0.1, 0.4, 0.8):
        d = 1e-6
        fd = (field.trajectory(x1, s + d) - field.trajectory(x1, s - d)) / (2 * d)
        v = field(field.trajectory(x1, s), torch.full((SHAPE[0],), s, dtype=torch.float64))
        assert torch.allclose(fd, v, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_point_mass_lands_exactly(name):
    target = torch.randn(SHAPE, generator=_gen(2), dtype=torch.float64)
    x1 = torch.randn(SHAPE, generator=_gen(3), dtype=torch.float64)
    for steps in (1, 2, 5, 12):
        for shift in (1.0, 3.0):
            out = SAMPLERS[name](PointMass(target), x1.clone(), flow_schedule(steps, shift))
            assert torch.allclose(out, target, atol=1e-10), (steps, shift)


def _err(name: str, steps: int, shift: float = 1.0) -> float:
    field, x1 = _gaussian()
    out = SAMPLERS[name](field, x1.clone(), flow_schedule(steps, shift))
    return (out - field.trajectory(x1, 0.0)).abs().max().item()


def test_euler_converges_first_order():
    errs = [_err("euler", n) for n in (10, 20, 40, 80)]
    for a, b in itertools.pairwise(errs):
        assert 1.7 < a / b < 2.3  # error ~ 1/N
    assert errs[-1] < 0.15


@pytest.mark.parametrize("name", ["unipc", "dpmpp_2m"])
def test_higher_order_solver_beats_euler(name):
    for steps in (8, 10):
        assert _err(name, steps) < _err("euler", steps) / 5
    # Second order: halving the step cuts the error by about 4 (Euler: 2).
    assert _err(name, 20) / _err(name, 40) > 2.8
    # With a shifted schedule it is still better than Euler.
    assert _err(name, 10, shift=3.0) < _err("euler", 10, shift=3.0) / 2


@pytest.mark.parametrize("name", ["unipc", "dpmpp_2m"])
def test_agrees_with_diffusers_schedulers(name):
    diffusers = pytest.importorskip("diffusers")
    field, x1 = _gaussian(0.3, 1.0)
    for steps in (6, 10):
        if name == "unipc":
            sch = diffusers.UniPCMultistepScheduler(
                use_flow_sigmas=True,
                prediction_type="flow_prediction",
                flow_shift=3.0,
                solver_order=2,
                solver_type="bh2",
            )
            sch.set_timesteps(sigmas=torch.linspace(1, 0, steps + 1)[:-1].numpy())
        else:
            sch = diffusers.DPMSolverMultistepScheduler(
                use_flow_sigmas=True,
                prediction_type="flow_prediction",
                flow_shift=3.0,
                solver_order=2,
                algorithm_type="dpmsolver++",
                solver_type="midpoint",
            )
            sch.set_timesteps(steps)
        x = x1.clone()
        for i, t in enumerate(sch.timesteps):
            v = field(x, sch.sigmas[i].double().expand(SHAPE[0]))
            x = sch.step(v, t, x).prev_sample
        ours = SAMPLERS[name](field, x1.clone(), sch.sigmas)
        assert torch.allclose(ours, x, atol=1e-6), (ours - x).abs().max()


# ------------------------------------------------------------------------------- calls, NaNs, callback


class Recorder:
    """A velocity field that checks its inputs and counts calls."""

    def __init__(self, inner) -> None:
        self.inner, self.calls, self.conds = inner, [], []

    def __call__(self, x, s, cond):
        assert torch.isfinite(x).all() and torch.isfinite(s).all()
        assert ((s >= 0) & (s <= 1)).all()
        self.calls.append(s.clone())
        self.conds.append(cond)
        return self.inner(x, s, cond)


@pytest.mark.parametrize("name", ALL)
def test_exact_call_count_finite_inputs_and_callback(name):
    field, x1 = _gaussian()
    for steps in (1, 3, 9):
        rec = Recorder(field)
        seen: list[tuple[int, int]] = []

        def callback(i: int, n: int, x: torch.Tensor, denoised: torch.Tensor, seen=seen) -> None:
            assert denoised.shape == x.shape
            seen.append((i, n))

        cond = Cond(context=torch.zeros(SHAPE[0], 1, 8))
        out = SAMPLERS[name](rec, x1.clone(), flow_schedule(steps, 3.0), cond, callback=callback)
        assert len(rec.calls) == steps
        assert all(c is cond for c in rec.conds)  # the sampler hands fn the Cond unchanged
        assert all(s.shape == (SHAPE[0],) for s in rec.calls)
        assert [c[0].item() for c in rec.calls] == pytest.approx(flow_schedule(steps, 3.0)[:-1].tolist())
        assert seen == [(i, steps) for i in range(1, steps + 1)]
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_callback_gets_each_steps_clean_estimate(name):
    """callback(step, n, x, denoised): denoised = x - s * v of the step's model call (for Euler the
    state it stepped from; for the multistep solvers the data prediction they build on); the step
    to s = 0 lands on its own estimate."""
    field, x1 = _gaussian()
    sig = flow_schedule(6, 3.0)
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def fn(x, s, c):
        v = field(x, s)
        calls.append((x.clone(), s.clone(), v.clone()))
        return v

    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def callback(i: int, n: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        assert n == 6
        seen.append((i, x.clone(), denoised.clone()))

    out = SAMPLERS[name](fn, x1.clone(), sig, callback=callback)
    assert [i for i, _, _ in seen] == list(range(1, 7)) and len(calls) == 6
    for (x_in, s, v), (_, _, denoised) in zip(calls, seen):
        assert torch.equal(s, torch.full_like(s, float(s[0])))
        torch.testing.assert_close(denoised, x_in - float(s[0]) * v, rtol=0, atol=1e-12)
    torch.testing.assert_close(seen[-1][2], out, rtol=0, atol=1e-12)
    assert torch.equal(seen[-1][1], out)
    # For a point mass the clean estimate is the point itself at every step.
    target = torch.randn(SHAPE, generator=_gen(2), dtype=torch.float64)
    estimates: list[torch.Tensor] = []
    SAMPLERS[name](PointMass(target), x1.clone(), sig, callback=lambda i, n, x, d: estimates.append(d))
    assert len(estimates) == 6 and all(torch.allclose(d, target, atol=1e-10) for d in estimates)


# -------------------------------------------------------------------------------------------- guidance


class ContextModel:
    """Nonlinear in context, honours the mask (masked mean); counts calls and batch sizes."""

    def __init__(self) -> None:
        g = _gen(4)
        self.proj = torch.randn(8, SHAPE[1], generator=g, dtype=torch.float64)
        self.calls: list[int] = []
        self.conds: list[Cond] = []

    def __call__(self, x, t, cond):
        self.calls.append(x.shape[0])
        self.conds.append(cond)
        context, context_mask = cond.context, cond.context_mask
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool)
        w = context_mask.to(context.dtype)[..., None]  # (B, L, 1)
        pooled = (context * w).sum(1) / w.sum(1)  # (B, D)
        c = torch.tanh(pooled @ self.proj)[:, :, None, None, None]  # (B, C, 1, 1, 1)
        tt = t.view(x.shape[0], 1, -1, 1, 1) / 1000.0
        return torch.sin(x) * c + tt * x - c


def _contexts(uncond_batch: int = 1) -> tuple[Cond, Cond]:
    """A conditional batch (masked text of 5 tokens) and an unconditional one (3 tokens, batch 1 or B)."""
    g = _gen(5)
    ctx = torch.randn(SHAPE[0], 5, 8, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    uncond = torch.randn(1, 3, 8, generator=g, dtype=torch.float64).repeat(uncond_batch, 1, 1)
    return Cond(context=ctx, context_mask=mask), Cond(context=uncond)


def test_guidance_scale_one_is_the_conditional_model():
    cond, uncond = _contexts()
    model = ContextModel()
    fn = make_velocity_fn(model, guidance_scale=1.0, uncond=uncond)
    x = torch.randn(SHAPE, generator=_gen(6), dtype=torch.float64)
    s = torch.tensor([0.7, 0.7])
    assert torch.equal(fn(x, s, cond), model(x, 1000 * s.double(), cond))
    assert model.calls == [SHAPE[0], SHAPE[0]]
    assert model.conds[0] is cond
    with pytest.raises(ValueError, match="needs a Cond"):
        fn(x, s, None)
    with pytest.raises(ValueError, match="batch"):
        fn(x[:1], s[:1], cond)


@pytest.mark.parametrize("uncond_batch", [1, SHAPE[0]])
def test_batched_guidance_equals_two_separate_calls(uncond_batch):
    cond, uncond = _contexts(uncond_batch)
    x = torch.randn(SHAPE, generator=_gen(7), dtype=torch.float64)
    model = ContextModel()
    g = 4.5
    fn = make_velocity_fn(model, guidance_scale=g, uncond=uncond)
    for s in (torch.tensor([0.3, 0.3]), torch.rand(SHAPE[0], SHAPE[2], generator=_gen(8))):
        model.calls.clear()
        out = fn(x, s, cond)
        assert model.calls == [2 * SHAPE[0]]  # one batched call
        t = 1000 * s.to(torch.float32)
        v_c = model(x, t, cond)
        v_u = model(x, t, Cond(context=uncond.context.expand(SHAPE[0], -1, -1)))
        assert torch.allclose(out, v_u + g * (v_c - v_u), atol=1e-12)
    with pytest.raises(ValueError, match="uncond"):
        make_velocity_fn(model, guidance_scale=3.0)
    with pytest.raises(ValueError, match="batch"):
        make_velocity_fn(model, guidance_scale=3.0, uncond=Cond(context=torch.zeros(3, 2, 8)))(x, s, cond)


def test_batched_guidance_pads_text_and_shares_the_known_frames():
    """The 2B batch: the conditional text padded to the longer length (padding masked out), and the
    unconditional half told the same known frames as the conditional half."""
    cond, uncond = _contexts()
    known = torch.randn(SHAPE, dtype=torch.float64)
    mask = torch.zeros(SHAPE[0], SHAPE[2], dtype=torch.bool)
    mask[:, 0] = True
    cond = cond.replace(known=known, known_mask=mask)
    uncond = Cond(context=torch.randn(1, 7, 8, dtype=torch.float64))  # longer than the prompt's 5
    model = ContextModel()
    fn = make_velocity_fn(model, guidance_scale=2.0, uncond=uncond)
    x = torch.randn(SHAPE, dtype=torch.float64)
    fn(x, torch.full((SHAPE[0],), 0.5), cond)
    (both,) = model.conds
    assert both.context.shape == (2 * SHAPE[0], 7, 8)
    assert both.context_mask[:2, 5:].logical_not().all() and both.context_mask[2:].all()
    assert torch.equal(both.context_mask[:2, :5], cond.context_mask)
    assert torch.equal(both.known, torch.cat([known, known]))
    assert torch.equal(both.known_mask, torch.cat([mask, mask]))


@pytest.mark.parametrize("name", ALL)
def test_sampler_with_guidance_makes_num_steps_batched_calls(name):
    cond, uncond = _contexts()
    model = ContextModel()
    fn = make_velocity_fn(model, guidance_scale=3.0, uncond=uncond)
    out = SAMPLERS[name](
        fn, torch.randn(SHAPE, generator=_gen(9), dtype=torch.float64), flow_schedule(7, 2.0), cond
    )
    assert model.calls == [2 * SHAPE[0]] * 7
    assert torch.isfinite(out).all()
    assert all(c is model.conds[0] for c in model.conds)  # the batched Cond is built once per cond


# ------------------------------------------------------------------------------------- known frames


@pytest.mark.parametrize("name", ALL)
def test_known_frames_are_preserved_and_flagged_clean(name):
    field, x1 = _gaussian()
    known = torch.randn(SHAPE, generator=_gen(10), dtype=torch.float64) * 3
    mask = torch.zeros(SHAPE[0], SHAPE[2], dtype=torch.bool)
    mask[0, 0] = True
    mask[1, [0, -1]] = True
    seen_x, seen_v, estimates = [], [], []

    def fn(x, s, c):
        assert c is cond
        assert s.shape == (SHAPE[0], SHAPE[2])
        assert (s[mask] == 0).all() and (s[~mask] > 0).all()
        seen_x.append(x.clone())
        seen_v.append(field(x, s))
        return seen_v[-1]

    cond = Cond(context=torch.zeros(SHAPE[0], 1, 8), known=known, known_mask=mask)
    sig = flow_schedule(6, 3.0)
    out = SAMPLERS[name](fn, x1.clone(), sig, cond, callback=lambda i, n, x, d: estimates.append(d))
    m5 = mask[:, None, :, None, None].expand(SHAPE)
    assert torch.equal(out[m5], known[m5])
    assert all(torch.equal(x[m5], known[m5]) for x in seen_x)
    assert len(seen_x) == 6
    # The callback's clean estimate: the known values on known frames, x - s * v elsewhere.
    for i, d in enumerate(estimates):
        assert torch.equal(d[m5], known[m5])
        want = seen_x[i] - float(sig[i]) * seen_v[i]
        torch.testing.assert_close(d[~m5], want[~m5], rtol=0, atol=1e-12)
    # Unknown frames are still generated (not left as noise, not the known values).
    assert not torch.equal(out[~m5], x1[~m5])
    with pytest.raises(ValueError, match="known_mask"):
        SAMPLERS[name](fn, x1, flow_schedule(3), cond.replace(known_mask=mask[:, :2]))
    with pytest.raises(ValueError, match="together"):  # a mask without the clean values
        SAMPLERS[name](fn, x1, flow_schedule(3), cond.replace(known=None))
    with pytest.raises(ValueError, match="known_mask"):  # and values without a mask: Cond refuses
        cond.replace(known_mask=None)


# -------------------------------------------------------------------------------------------- SDEdit


def test_sdedit_strength_zero_returns_input():
    x0 = torch.randn(SHAPE, generator=_gen(11))
    noise = torch.randn(SHAPE, generator=_gen(12))
    sig = flow_schedule(10, 3.0)
    start, kept = sdedit_start(x0, noise, 0.0, sig)
    assert torch.equal(start, x0) and kept.tolist() == [0.0]
    for name in ALL:
        rec = Recorder(lambda x, s, c: torch.full_like(x, float("nan")))
        assert torch.equal(SAMPLERS[name](rec, start, kept), x0)
        assert rec.calls == []


def test_sdedit_truncates_schedule_and_noises_partially():
    x0 = torch.randn(SHAPE, generator=_gen(11), dtype=torch.float64)
    noise = torch.randn(SHAPE, generator=_gen(12), dtype=torch.float64)
    sig = flow_schedule(10, 3.0)
    start, kept = sdedit_start(x0, noise, 1.0, sig)
    assert torch.equal(kept, sig) and torch.equal(start, noise)
    start, kept = sdedit_start(x0, noise, 0.3, sig)
    assert torch.equal(kept, sig[7:])
    assert torch.allclose(start, interpolate(x0, noise, float(sig[7])))
    # From a partial start the solvers still land on the point mass.
    target = torch.randn(SHAPE, generator=_gen(13), dtype=torch.float64)
    start, kept = sdedit_start(target, noise, 0.6, sig)
    for name in ALL:
        assert torch.allclose(SAMPLERS[name](PointMass(target), start, kept), target, atol=1e-10)
    with pytest.raises(ValueError):
        sdedit_start(x0, noise, 1.5, sig)


def test_rejects_bad_schedules():
    x = torch.randn(SHAPE)
    for bad in (torch.tensor([0.0, 1.0]), torch.tensor([1.5, 0.0]), torch.ones(2, 2)):
        for sampler in (sample_euler, sample_unipc, sample_dpmpp_2m):
            with pytest.raises(ValueError, match="sigmas"):
                sampler(lambda x, s, c: x, x, bad)

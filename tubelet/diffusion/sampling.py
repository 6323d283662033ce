"""Samplers for rectified-flow models: noise schedules, the guided velocity function, ODE solvers.

Convention (see `tubelet.diffusion.flow`): ``x_s = (1 - s) * x0 + s * noise``, s = 1 is noise and
s = 0 is data, the model predicts ``v = noise - x0`` at model time ``t = 1000 * s``. A sampler
integrates the ODE ``dx/ds = v(x, s)`` from ``sigmas[0]`` (usually 1) down to ``sigmas[-1]`` (usually 0).

Every sampler has the signature
``sampler(fn, x, sigmas, cond=None, *, callback=None) -> x0`` where

* ``fn(x, s, cond) -> v`` is a velocity function (build one from a model with `make_velocity_fn`);
  ``s`` is a float32 tensor of shape (B,), or (B, F) when ``cond.known_mask`` is set;
* ``x`` (B, C, F, H, W) is the state at ``sigmas[0]`` (pure noise for text-to-video, or the output of
  `sdedit_start`);
* ``sigmas`` is a non-increasing 1-D schedule in [0, 1] with num_steps + 1 entries (`flow_schedule`);
  the sampler calls ``fn`` exactly num_steps times;
* ``cond`` (a `tubelet.diffusion.cond.Cond`) is handed to ``fn`` unchanged; its ``known``
  (B, C, F, H, W) clean latents and ``known_mask`` (B, F) bool mark latent frames given as
  conditioning (image-to-video, extension, interpolation): before every call they are reset to their
  clean values and ``fn`` is told s = 0 for them, and the output holds them exactly;
* ``callback(step, num_steps, x, denoised)`` is called after every step, ``step`` counting completed
  steps (1 .. num_steps), ``x`` the new state and ``denoised`` the clean-clip estimate x0_hat of the
  step's model call (for progress bars and live previews); known frames hold their clean values there.

Solvers: "euler" (first order) and two second-order multistep solvers in the data-prediction (x0)
parameterisation, which cost no extra model calls: "unipc" (UniPC, B(h) = e^h - 1 variant "bh2",
predictor-corrector, the Wan default) and "dpmpp_2m" (DPM-Solver++(2M), midpoint form). For flow
models alpha_s = 1 - s, sigma_s = s, log-SNR lambda = log((1 - s) / s), and the data prediction is
``x0_hat = x - s * v``; the first-order step of both solvers is then exactly an Euler step. Both take a
first-order step first (no history yet) and last (the step to s = 0, where lambda is infinite).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch

from tubelet.diffusion.cond import Cond
from tubelet.diffusion.flow import NUM_TRAIN_TIMESTEPS, interpolate, shift_sigmas

VelocityFn = Callable[[torch.Tensor, torch.Tensor, "Cond | None"], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]

_S_MAX_LOG = 1.0 - 1e-6  # s is clamped to this inside log-SNR only (s = 1 has lambda = -inf)


SCHEDULES = ("uniform", "diffusers")


def flow_schedule(num_steps: int, shift: float = 1.0, kind: str = "uniform") -> torch.Tensor:
    """Noise levels for `num_steps` steps: (num_steps + 1,) float32, from 1 down to exactly 0.

    kind "uniform" (tubelet's): uniform in s from exactly 1, then shifted with `flow.shift_sigmas`
    (shift > 1 spends more steps at high noise; use the shift the model was trained with, e.g.
    `flow.effective_shift(cfg, num_tokens)`). kind "diffusers": the flow-sigma schedule of diffusers'
    UniPC / DPM-Solver schedulers, which Wan's pipelines use: uniform from 1 to 1/1000 over
    num_steps + 1 points without the last, shifted, the first lowered by 1e-6, then 0. With it the
    model is called at integer timesteps (`make_velocity_fn(integer_timesteps=True)`), as diffusers does.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if kind == "diffusers":
        s = torch.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, num_steps + 1, dtype=torch.float64)[:-1]
        s = shift_sigmas(s, float(shift))
        if abs(float(s[0]) - 1.0) < 1e-6:
            s[0] -= 1e-6
        return torch.cat([s, s.new_zeros(1)]).to(torch.float32)
    if kind != "uniform":
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    s = shift_sigmas(s, float(shift))
    s[0], s[-1] = 1.0, 0.0
    return s.to(torch.float32)


# ----------------------------------------------------------------------------------------------- #
# The guided velocity function
# ----------------------------------------------------------------------------------------------- #


def _model_time(
    s: torch.Tensor | float, batch: int, device: torch.device, integer: bool = False
) -> torch.Tensor:
    """s (float, 0-dim, (B,) or (B, F)) -> model time 1000 * s as float32 (B,) or (B, F) (floored: `integer`)."""
    s = torch.as_tensor(s, dtype=torch.float32, device=device)
    if s.dim() == 0:
        s = s.expand(batch)
    if s.shape[0] != batch or s.dim() > 2:
        raise ValueError(f"s has shape {tuple(s.shape)}; expected a scalar, (B,) or (B, F) with B={batch}")
    if integer:  # diffusers' schedulers hand the model int64(1000 * sigma) (computed in float64)
        return torch.floor(NUM_TRAIN_TIMESTEPS * s.double()).to(torch.float32)
    return NUM_TRAIN_TIMESTEPS * s


def make_velocity_fn(
    model: Callable[..., torch.Tensor],
    *,
    guidance_scale: float | Callable[[torch.Tensor], float] = 1.0,
    uncond: Cond | None = None,
    integer_timesteps: bool = False,
) -> VelocityFn:
    """Wrap ``model(x, t, cond)`` as ``fn(x, s, cond) -> v`` with classifier-free guidance.

    uncond: the conditioning of the unconditional pass (e.g. the encoded empty or negative prompt),
    batch 1 or B. With guidance_scale == 1 the model is called once on the conditional batch.
    Otherwise the two passes are batched into ONE call of batch 2B (`Cond.cat`: text zero-padded to
    the same length, padding masked out) and combined as ``v = v_u + g * (v_c - v_u)``. The
    batched conditioning is built once per `cond` and reused for every step. `integer_timesteps`:
    the model is called at floor(1000 s), as diffusers' schedulers call it (Wan-compatible sampling).
    `guidance_scale` may be a function of the model's timesteps t (B,) (one scale per expert of a
    two-expert model); then every call is guided.
    """
    scale_of = guidance_scale if callable(guidance_scale) else None
    g = 0.0 if scale_of is not None else float(cast(float, guidance_scale))
    if g == 1.0:

        def fn_single(x: torch.Tensor, s: torch.Tensor, cond: Cond | None) -> torch.Tensor:
            if cond is None:
                raise ValueError("the velocity function needs a Cond")
            if x.shape[0] != cond.batch_size:
                raise ValueError(f"x has batch {x.shape[0]}; the conditioning has batch {cond.batch_size}")
            return model(x, _model_time(s, x.shape[0], x.device, integer_timesteps), cond)

        return fn_single

    if uncond is None:
        raise ValueError(f"guidance_scale={g} needs uncond (the encoded empty or negative prompt)")
    cache: dict[str, Any] = {}

    def fn_guided(x: torch.Tensor, s: torch.Tensor, cond: Cond | None) -> torch.Tensor:
        if cond is None:
            raise ValueError("the velocity function needs a Cond")
        batch = cond.batch_size
        if x.shape[0] != batch:
            raise ValueError(f"x has batch {x.shape[0]}; the conditioning has batch {batch}")
        if cache.get("key") is not cond:
            u = uncond.expand(batch).replace(known=cond.known, known_mask=cond.known_mask)
            cache["key"], cache["both"] = cond, Cond.cat([cond, u])
        t = _model_time(s, batch, x.device, integer_timesteps)
        v = model(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), cache["both"])  # (2B, ...)
        v_c, v_u = v.chunk(2, dim=0)
        scale = scale_of(t) if scale_of is not None else g
        return v_u + scale * (v_c - v_u)

    return fn_guided


# ----------------------------------------------------------------------------------------------- #
# Shared sampler plumbing
# ----------------------------------------------------------------------------------------------- #


class _Conditioning:
    """Validated known-frame conditioning and the per-step noise-level tensors handed to fn."""

    def __init__(self, x: torch.Tensor, cond: Cond | None) -> None:
        known = cond.known if cond is not None else None
        known_mask = cond.known_mask if cond is not None else None
        self.cond = cond
        self.batch = x.shape[0]
        self.device = x.device
        if (known is None) != (known_mask is None):
            raise ValueError("a sampler needs Cond.known and Cond.known_mask together (or neither)")
        self.known = known
        self.mask5 = None
        self.mask = None
        if known is not None and known_mask is not None:
            if x.dim() != 5:
                raise ValueError(
                    f"known frames need latents (B, C, F, H, W), got x of shape {tuple(x.shape)}"
                )
            if known.shape != x.shape:
                raise ValueError(f"known has shape {tuple(known.shape)}; expected x's shape {tuple(x.shape)}")
            b, _, f, _, _ = x.shape
            if known_mask.shape != (b, f):
                raise ValueError(f"known_mask has shape {tuple(known_mask.shape)}; expected (B, F)={(b, f)}")
            self.mask = known_mask.to(device=x.device, dtype=torch.bool)  # (B, F)
            self.mask5 = self.mask[:, None, :, None, None]  # (B, 1, F, 1, 1)
            self.known = known.to(device=x.device, dtype=x.dtype)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Reset the known frames of x to their clean values."""
        if self.mask5 is None or self.known is None:  # set together in __init__
            return x
        return torch.where(self.mask5, self.known, x)

    def s_tensor(self, s: float) -> torch.Tensor:
        """Noise level for fn: (B,) filled with s, or (B, F) with 0 at known frames."""
        if self.mask is None:
            return torch.full((self.batch,), s, dtype=torch.float32, device=self.device)
        return torch.where(self.mask, 0.0, torch.full(self.mask.shape, s, device=self.device))


def _check_sigmas(sigmas: torch.Tensor) -> list[float]:
    sig = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
    if sig.dim() != 1 or sig.numel() < 1:
        raise ValueError(
            f"sigmas must be a 1-D schedule with num_steps + 1 entries, got shape {tuple(sig.shape)}"
        )
    if not torch.isfinite(sig).all() or sig.min() < 0 or sig.max() > 1:
        raise ValueError(f"sigmas must lie in [0, 1], got {sig.tolist()}")
    if (sig[1:] > sig[:-1]).any():
        raise ValueError(f"sigmas must be non-increasing (noise -> data), got {sig.tolist()}")
    return sig.tolist()


def _log_snr(s: float) -> float:
    """lambda(s) = log((1 - s) / s) for flow, with s clamped below 1 (s > 0 required)."""
    s = min(s, _S_MAX_LOG)
    return math.log1p(-s) - math.log(s)


def _x0_pred(fn: VelocityFn, x: torch.Tensor, s: float, cond: _Conditioning) -> torch.Tensor:
    """Call the velocity function once and convert to a data prediction x0_hat = x - s * v."""
    v = fn(x, cond.s_tensor(s), cond.cond)
    if v.shape != x.shape:
        raise ValueError(f"velocity function returned shape {tuple(v.shape)}; expected {tuple(x.shape)}")
    return x - s * v.to(x.dtype)


def _euler_from_x0(x: torch.Tensor, m: torch.Tensor, s: float, t: float) -> torch.Tensor:
    """First-order step s -> t written with the data prediction m: x_t = (t/s) x + (1 - t/s) m.

    Identical to x + (t - s) * v with v = (x - m) / s, and to the first-order DPM-Solver++/UniPC step.
    """
    if s == t:
        return x
    return (t / s) * x + (1.0 - t / s) * m


# ----------------------------------------------------------------------------------------------- #
# Samplers
# ----------------------------------------------------------------------------------------------- #


def sample_euler(
    fn: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Cond | None = None,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Explicit Euler on dx/ds = v(x, s): ``x <- x + (s_next - s) * v``. One model call per step."""
    sig = _check_sigmas(sigmas)
    kc = _Conditioning(x, cond)
    n = len(sig) - 1
    for i in range(n):
        x = kc.apply(x)
        v = fn(x, kc.s_tensor(sig[i]), cond)
        if v.shape != x.shape:
            raise ValueError(f"velocity function returned shape {tuple(v.shape)}; expected {tuple(x.shape)}")
        v = v.to(x.dtype)
        if callback is not None:
            denoised = x - sig[i] * v
        x = x + (sig[i + 1] - sig[i]) * v
        if callback is not None:
            callback(i + 1, n, x, kc.apply(denoised))
    return kc.apply(x)


def sample_unipc(
    fn: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Cond | None = None,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """UniPC-2 (bh2) multistep predictor-corrector in the flow data-prediction parameterisation.

    Per step (s0 -> t, step size h = lambda_t - lambda_s0 in log-SNR): one model call at the current
    point gives x0_hat; the corrector UniC re-does the previous step using it (no extra call), then the
    predictor UniP-2 extrapolates with the last two x0_hat. First step and the step to s = 0 are order 1.
    Matches diffusers' UniPCMultistepScheduler(use_flow_sigmas, prediction_type="flow_prediction",
    solver_order=2, solver_type="bh2") on the same sigmas.
    """
    sig = _check_sigmas(sigmas)
    kc = _Conditioning(x, cond)
    n = len(sig) - 1
    ms: list[torch.Tensor] = []  # data predictions at sig[i-1], sig[i]
    last_x: torch.Tensor | None = None  # state at sig[i-1] before the previous predictor step
    last_order = 0
    for i in range(n):
        x = kc.apply(x)
        m = _x0_pred(fn, x, sig[i], kc)
        if last_x is not None:
            x = kc.apply(_unic(last_x, x, m, ms, sig, i, last_order))
        ms = [*ms[-1:], m]
        order = min(2, i + 1, n - i)
        if sig[i + 1] == 0.0:
            order = 1
        last_x, last_order = x, order
        x = _unip(x, ms, sig, i, order)
        if callback is not None:
            callback(i + 1, n, x, kc.apply(m))
    return kc.apply(x)


def _bh2_coeffs(h: float) -> tuple[float, float, float]:
    """For step h in log-SNR (data prediction, hh = -h): B(h) = e^hh - 1 and the UniC right-hand sides.

    b1 = (phi1/hh - 1) / B, b2 = 2 * ((phi1/hh - 1)/hh - 1/2) / B with phi1 = e^hh - 1 (= B for bh2).
    """
    hh = -h
    phi1 = math.expm1(hh)
    bh = phi1
    k1 = phi1 / hh - 1.0
    b1 = k1 / bh
    k2 = k1 / hh - 0.5
    b2 = 2.0 * k2 / bh
    return bh, b1, b2


def _unip(x: torch.Tensor, ms: list[torch.Tensor], sig: list[float], i: int, order: int) -> torch.Tensor:
    """UniP predictor for the step sig[i] -> sig[i+1] (order 1 or 2); ms[-1] is x0_hat at sig[i]."""
    s0, t = sig[i], sig[i + 1]
    m0 = ms[-1]
    x_t = _euler_from_x0(x, m0, s0, t)
    if order == 1 or s0 == t or sig[i - 1] == s0:
        return x_t
    # alpha_t * B(h) = alpha_t * (e^-h - 1) = (t - s0) / s0 for flow.
    lam_t, lam_s0, lam_s1 = _log_snr(t), _log_snr(s0), _log_snr(sig[i - 1])
    h = lam_t - lam_s0
    r1 = (lam_s1 - lam_s0) / h
    d1 = (ms[-2] - m0) / r1
    return x_t - ((t - s0) / s0) * 0.5 * d1


def _unic(
    x_prev: torch.Tensor,
    x_new: torch.Tensor,
    m_new: torch.Tensor,
    ms: list[torch.Tensor],
    sig: list[float],
    i: int,
    order: int,
) -> torch.Tensor:
    """UniC corrector for the step sig[i-1] -> sig[i] that produced x_new, using m_new = x0_hat(x_new).

    ms[-1] is x0_hat at sig[i-1] (and ms[-2] at sig[i-2] for order 2). Returns the corrected state.
    """
    s0, t = sig[i - 1], sig[i]
    if s0 == t:
        return x_new
    m0 = ms[-1]
    x_t = _euler_from_x0(x_prev, m0, s0, t)
    scale = (t - s0) / s0  # alpha_t * B(h)
    d1_t = m_new - m0
    if order == 1 or sig[i - 2] == s0:
        return x_t - scale * 0.5 * d1_t
    lam_t, lam_s0, lam_s1 = _log_snr(t), _log_snr(s0), _log_snr(sig[i - 2])
    h = lam_t - lam_s0
    r1 = (lam_s1 - lam_s0) / h
    _, b1, b2 = _bh2_coeffs(h)
    # Solve [[1, 1], [r1, 1]] @ (rho0, rho1) = (b1, b2).
    rho0 = (b2 - b1) / (r1 - 1.0)
    rho1 = b1 - rho0
    d1 = (ms[-2] - m0) / r1
    return x_t - scale * (rho0 * d1 + rho1 * d1_t)


def sample_dpmpp_2m(
    fn: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Cond | None = None,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), midpoint form, in the flow data-prediction parameterisation.

    x_t = (t/s0) x - alpha_t (e^-h - 1) (D0 + D1/2), D0 = x0_hat(s0), D1 = (D0 - x0_hat(s1)) / r,
    r = h_prev / h. First step and the step to s = 0 are first order (= Euler).
    """
    sig = _check_sigmas(sigmas)
    kc = _Conditioning(x, cond)
    n = len(sig) - 1
    m_prev: torch.Tensor | None = None
    for i in range(n):
        s0, t = sig[i], sig[i + 1]
        x = kc.apply(x)
        m = _x0_pred(fn, x, s0, kc)
        if m_prev is None or t == 0.0 or s0 == t or sig[i - 1] == s0:
            x = _euler_from_x0(x, m, s0, t)
        else:
            lam_t, lam_s0, lam_s1 = _log_snr(t), _log_snr(s0), _log_snr(sig[i - 1])
            r = (lam_s0 - lam_s1) / (lam_t - lam_s0)
            d = m + (0.5 / r) * (m - m_prev)
            x = _euler_from_x0(x, d, s0, t)
        m_prev = m
        if callback is not None:
            callback(i + 1, n, x, kc.apply(m))
    return kc.apply(x)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "unipc": sample_unipc,
    "dpmpp_2m": sample_dpmpp_2m,
}


# ----------------------------------------------------------------------------------------------- #
# SDEdit
# ----------------------------------------------------------------------------------------------- #


def sdedit_start(
    x0: torch.Tensor, noise: torch.Tensor, strength: float, sigmas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Start sampling from a partially noised clip (SDEdit / video-to-video).

    strength in [0, 1] is the share of the schedule to run: the last floor(strength * num_steps) steps
    are kept. Returns (x_start, truncated sigmas) with x_start = (1 - s) x0 + s noise at the first kept
    level. Strength 0 keeps no step (returns x0 itself and the single final level); strength 1 keeps
    the whole schedule.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"SDEdit strength must be in [0, 1], got {strength}")
    sig = torch.as_tensor(sigmas)
    _check_sigmas(sig)
    n = sig.numel() - 1
    keep = min(n, math.floor(strength * n + 1e-9))
    sig = sig[n - keep :]
    s0 = float(sig[0])
    if s0 == 0.0:
        return x0, sig
    return interpolate(x0, noise, s0), sig

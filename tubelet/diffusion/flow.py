"""The rectified-flow (flow-matching) training objective, model-agnostic.

Convention (shared with `tubelet.diffusion.sampling`, the Wan convention):

* noise level ``s`` in [0, 1]: ``s = 0`` is data, ``s = 1`` is pure Gaussian noise;
* the straight path between a clean latent ``x0`` and a noise draw ``noise`` is
  ``x_s = (1 - s) * x0 + s * noise``;
* the model is asked for the velocity ``v = d x_s / d s = noise - x0``;
* the model sees the time ``t = 1000 * s`` (floats in [0, 1000]), either one per sample, shape (B,),
  or one per latent frame, shape (B, F), when some frames are given as clean conditioning;
* sampling integrates from ``s = 1`` to ``s = 0``: ``x <- x + (s_next - s) * v``.

Model contract: ``model(x, t, cond) -> velocity`` with ``x`` (B, C, F, H, W) latents, ``t`` (B,) or
(B, F) and ``cond`` a `tubelet.diffusion.cond.Cond` (text states + mask, known frames, ...).

Timestep shift. Sampling ``s`` uniformly (or logit-normally) puts too little weight on high noise for
large inputs, where neighbouring tokens are strongly correlated and low noise barely hides the signal.
The SD3 shift ``s' = shift * s / (1 + (shift - 1) * s)`` moves mass towards ``s = 1`` for ``shift > 1``.
With ``FlowConfig.shift = None`` the shift is resolution-aware (the SD3/Flux rule): ``mu`` is linear in
the number of latent tokens, ``mu = base_shift`` at ``base_tokens`` and ``max_shift`` at ``max_tokens``,
and ``shift = exp(mu)``. The defaults are Flux's constants (256 tokens -> mu 0.5, shift 1.65;
4096 tokens -> mu 1.15, shift 3.16). Unlike Flux we clamp ``mu`` to [base_shift, max_shift] outside
that token range, so a long video does not get an unbounded shift; Wan, for comparison, uses a fixed
shift of 3 to 5 at ~30k tokens. The same shift must be used for the sampling schedule
(`tubelet.diffusion.sampling.flow_schedule(num_steps, shift)`).

Frame conditioning. One network learns text-to-video, image-to-video, first+last-frame interpolation
and forward/backward extension: for a random share of the batch some latent frames are *known*; they
are fed clean (their per-frame ``s`` is 0) and are excluded from the loss. `sample_known_frames` draws
that task mix from the config.

Classifier-free guidance. The trainer replaces a caption by the empty prompt ``""`` with probability
``FlowConfig.caption_dropout`` before encoding the texts, using `drop_captions(texts, p, generator)`;
at sampling time the empty prompt gives the unconditional velocity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import torch

from tubelet.diffusion.cond import Cond
from tubelet.errors import ConfigError

NUM_TRAIN_TIMESTEPS = 1000.0  # model time t = NUM_TRAIN_TIMESTEPS * s
_S_EPS = 1e-5  # sampled training noise levels are kept inside [_S_EPS, 1 - _S_EPS]

TASKS = ("t2v", "i2v", "first_last", "extend_forward", "extend_backward")


@dataclass
class FlowConfig:
    """Rectified-flow objective settings.

    t_sampling: how the base noise level u is drawn before the shift: "logit_normal" (u =
        sigmoid(N(logit_mean, logit_std^2)), the SD3 choice, concentrates on mid noise) or "uniform".
    shift: fixed timestep shift (> 0, 1 = none), or None for the resolution-aware shift (see module doc).
    base_shift, max_shift, base_tokens, max_tokens: the resolution-aware rule, mu linear in tokens.
    caption_dropout: probability that the trainer replaces a caption by "" (for classifier-free guidance).
    p_i2v: probability that the first latent frame is known (image-to-video).
    p_first_last: probability that the first and the last latent frames are known (interpolation, loops).
    p_extend_forward: probability that a prefix of k latent frames is known, k uniform in [1, F - 1].
    p_extend_backward: probability that a suffix of k latent frames is known, k uniform in [1, F - 1].
    The remaining probability, 1 - sum(p_*), is plain text-to-video (no known frame).
    """

    t_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float | None = None
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_tokens: int = 256
    max_tokens: int = 4096
    caption_dropout: float = 0.1
    # Optional mixture of training shifts: each sample draws its shift uniformly from this list (e.g.
    # [100, 3]: half the batch where the prompt decides the layout, half where objects are visible).
    # `shift` (or the resolution rule) still sets the sampling schedule.
    shift_mix: list[float] | None = None
    p_i2v: float = 0.1
    p_first_last: float = 0.05
    p_extend_forward: float = 0.05
    p_extend_backward: float = 0.05

    def __post_init__(self) -> None:
        if self.t_sampling not in ("logit_normal", "uniform"):
            raise ConfigError(
                f"FlowConfig.t_sampling: {self.t_sampling!r} is not one of ['logit_normal', 'uniform']"
            )
        if not self.logit_std > 0:
            raise ConfigError(f"FlowConfig.logit_std: must be > 0, got {self.logit_std}")
        if self.shift is not None and not self.shift > 0:
            raise ConfigError(f"FlowConfig.shift: must be > 0 (1 = no shift) or null, got {self.shift}")
        if not 0 < self.base_tokens < self.max_tokens:
            raise ConfigError(
                f"FlowConfig: need 0 < base_tokens < max_tokens, got {self.base_tokens} and {self.max_tokens}"
            )
        if self.shift_mix is not None:
            if not self.shift_mix or any(not float(x) > 0 for x in self.shift_mix):
                raise ConfigError(
                    f"FlowConfig.shift_mix: a non-empty list of shifts > 0, got {self.shift_mix}"
                )
            self.shift_mix = [float(x) for x in self.shift_mix]
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ConfigError(f"FlowConfig.caption_dropout: must be in [0, 1], got {self.caption_dropout}")
        probs = self.task_probs()
        for name, p in zip(TASKS[1:], probs[1:]):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"FlowConfig.p_{name}: must be in [0, 1], got {p}")
        if probs[0] < -1e-9:
            raise ConfigError(
                f"FlowConfig: the task probabilities p_i2v + p_first_last + p_extend_forward + "
                f"p_extend_backward sum to {1.0 - probs[0]:.4f}; they must sum to at most 1"
            )

    def task_probs(self) -> list[float]:
        """Probabilities of the tasks in `TASKS` order (t2v first, the remainder)."""
        rest = [self.p_i2v, self.p_first_last, self.p_extend_forward, self.p_extend_backward]
        return [1.0 - sum(rest), *rest]


# ----------------------------------------------------------------------------------------------- #
# Noise levels
# ----------------------------------------------------------------------------------------------- #


@overload
def shift_sigmas(s: torch.Tensor, shift: float) -> torch.Tensor: ...
@overload
def shift_sigmas(s: float, shift: float) -> float: ...
def shift_sigmas(s: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """SD3 timestep shift ``s' = shift * s / (1 + (shift - 1) * s)``.

    Maps 0 -> 0 and 1 -> 1, is monotone increasing for shift > 0, is the identity for shift = 1 and
    pushes noise levels towards 1 for shift > 1. Works on floats and tensors of any shape.
    """
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * s / (1 + (shift - 1) * s)


def resolution_shift(num_tokens: int, cfg: FlowConfig) -> float:
    """Resolution-aware shift ``exp(mu)``, mu linear in `num_tokens` (clamped to the config's range).

    ``mu = base_shift + (max_shift - base_shift) * (num_tokens - base_tokens) / (max_tokens - base_tokens)``
    clamped to [min(base_shift, max_shift), max(base_shift, max_shift)].
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    slope = (cfg.max_shift - cfg.base_shift) / (cfg.max_tokens - cfg.base_tokens)
    mu = cfg.base_shift + slope * (num_tokens - cfg.base_tokens)
    lo, hi = sorted((cfg.base_shift, cfg.max_shift))
    return math.exp(min(max(mu, lo), hi))


def effective_shift(cfg: FlowConfig, num_tokens: int | None) -> float:
    """The shift `cfg` asks for: `cfg.shift`, or the resolution-aware one for `num_tokens`."""
    if cfg.shift is not None:
        return float(cfg.shift)
    if num_tokens is None:
        raise ValueError("FlowConfig.shift is None (resolution-aware): pass num_tokens")
    return resolution_shift(num_tokens, cfg)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def sample_timesteps(
    batch: int,
    cfg: FlowConfig,
    generator: torch.Generator | None = None,
    num_tokens: int | None = None,
) -> torch.Tensor:
    """Draw `batch` training noise levels s in (0, 1), float32, on the generator's device (CPU if None).

    u ~ logit-normal(cfg.logit_mean, cfg.logit_std) or uniform(0, 1), then s = shift_sigmas(u, shift)
    with the fixed or resolution-aware shift (or, with `cfg.shift_mix`, a shift drawn per sample from
    that list), clamped to [1e-5, 1 - 1e-5].
    """
    device = _gen_device(generator)
    if cfg.t_sampling == "logit_normal":
        z = torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
        u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * z)
    else:
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    if cfg.shift_mix:
        pick = torch.randint(len(cfg.shift_mix), (batch,), generator=generator, device=device)
        k = torch.tensor(cfg.shift_mix, dtype=torch.float64, device=device)[pick]  # (B,)
        s = k * u / (1 + (k - 1) * u)
    else:
        s = shift_sigmas(u, effective_shift(cfg, num_tokens))
    return s.clamp(_S_EPS, 1.0 - _S_EPS).to(torch.float32)  # (B,)


def _broadcast_s(s: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """Shape a noise level for broadcasting against x (B, C, F, H, W).

    s may be a float, a 0-dim tensor, (B,) one per sample, or (B, F) one per latent frame.
    """
    if not isinstance(s, torch.Tensor) or s.dim() == 0:
        return s
    b = x.shape[0]
    if s.dim() == 1:
        if s.shape[0] != b:
            raise ValueError(f"s has shape {tuple(s.shape)}; expected (B,) with B={b}")
        return s.view(b, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1, 1)
    if s.dim() == 2:
        if x.dim() != 5 or s.shape != (b, x.shape[2]):
            raise ValueError(
                f"per-frame s has shape {tuple(s.shape)}; expected (B, F)={(b, x.shape[2] if x.dim() == 5 else '?')} "
                f"for latents of shape (B, C, F, H, W)={tuple(x.shape)}"
            )
        return s.view(b, 1, s.shape[1], 1, 1)  # (B, 1, F, 1, 1)
    raise ValueError(f"s must be a scalar, (B,) or (B, F); got shape {tuple(s.shape)}")


def interpolate(x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """The point ``x_s = (1 - s) * x0 + s * noise`` on the straight path (exactly x0 at s=0, noise at s=1).

    x0, noise: (B, C, F, H, W) (any shape if s is a scalar or (B,)); s: float, (B,) or (B, F).
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    sb = _broadcast_s(s, x0)
    if isinstance(sb, torch.Tensor):
        sb = sb.to(dtype=x0.dtype, device=x0.device)
    return (1 - sb) * x0 + sb * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow regression target ``v = noise - x0`` (the derivative of x_s in s)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    return noise - x0


# ----------------------------------------------------------------------------------------------- #
# Conditioning mix and caption dropout
# ----------------------------------------------------------------------------------------------- #


def sample_known_frames(
    batch: int,
    num_frames: int,
    cfg: FlowConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw which latent frames are given clean, per sample: (B, F) bool on the generator's device.

    One task per sample with `cfg.task_probs()` (order: t2v, i2v, first_last, extend_forward,
    extend_backward): t2v -> no frame known; i2v -> frame 0; first_last -> frames 0 and F-1;
    extend_forward -> frames [0, k); extend_backward -> frames [F-k, F); k uniform in [1, F-1].
    A draw that would leave no frame to predict (F = 1, or first_last with F = 2) becomes t2v.
    """
    if batch < 0 or num_frames < 1:
        raise ValueError(f"need batch >= 0 and num_frames >= 1, got {batch} and {num_frames}")
    device = _gen_device(generator)
    probs = torch.tensor([max(p, 0.0) for p in cfg.task_probs()], dtype=torch.float64, device=device)
    if batch == 0:
        return torch.zeros(0, num_frames, dtype=torch.bool, device=device)
    task = torch.multinomial(probs, batch, replacement=True, generator=generator)  # (B,)
    hi = max(num_frames, 2)
    k = torch.randint(1, hi, (batch,), generator=generator, device=device)  # (B,) in [1, F-1]
    idx = torch.arange(num_frames, device=device)[None]  # (1, F)
    task, k = task[:, None], k[:, None]
    first = idx == 0
    last = idx == num_frames - 1
    known = (
        ((task == 1) & first)
        | ((task == 2) & (first | last))
        | ((task == 3) & (idx < k))
        | ((task == 4) & (idx >= num_frames - k))
    )  # (B, F)
    all_known = known.all(dim=1, keepdim=True)  # (B, 1)
    return known & ~all_known


def drop_captions(texts: Sequence[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each caption by the empty prompt "" with probability `p` (classifier-free guidance)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout probability must be in [0, 1], got {p}")
    texts = list(texts)
    if not texts:
        return []
    drop = torch.rand(len(texts), generator=generator, device=_gen_device(generator)) < p
    return ["" if d else t for t, d in zip(texts, drop.tolist())]


# ----------------------------------------------------------------------------------------------- #
# Loss
# ----------------------------------------------------------------------------------------------- #


def flow_matching_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    cond: Cond,
    *,
    cfg: FlowConfig,
    generator: torch.Generator | None = None,
    num_tokens: int | None = None,
    noise: torch.Tensor | None = None,
    s: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rectified-flow MSE: draw noise and s, build x_s, regress the model's velocity on ``noise - x0``.

    x0: (B, C, F, H, W) clean latents; cond: the conditioning handed to ``model(x_s, t, cond)``.
    cond.known_mask: optional (B, F) bool; those frames are fed clean (taken from x0, per-frame
        s = 0, so the model gets t of shape (B, F)) and left out of the loss. Without it the model
        gets t of shape (B,).
    num_tokens: token count for the resolution-aware shift (when cfg.shift is None); defaults to
        F * H * W latent positions. Pass the count after patchify (F*H*W / patch area) to match sampling.
    generator: draws noise and s on the generator's device (then moved to x0's device); for GPU training
        pass a generator on the GPU so the noise is not copied from the host. None: the global RNG,
        noise drawn on x0's device.
    noise, s: optional pre-drawn noise (like x0) and noise levels (B,) (e.g. slices of a global
        batch's draw, so that a data-parallel run sees the same randomness as a single process).

    Returns (loss, stats): loss is a 0-dim float32 tensor, the mean squared error over all elements of
    the frames that are not known; stats holds detached tensors: "loss", "s" (B,) noise levels,
    "loss_per_sample" (B,), "known_fraction" (share of known frames).
    """
    if x0.dim() != 5:
        raise ValueError(f"x0 must be latents (B, C, F, H, W), got shape {tuple(x0.shape)}")
    b, c, f, h, w = x0.shape
    device = x0.device
    known_frames = cond.known_mask
    if known_frames is not None:
        if known_frames.shape != (b, f):
            raise ValueError(f"known_mask has shape {tuple(known_frames.shape)}; expected (B, F)={(b, f)}")
        known_frames = known_frames.to(device=device, dtype=torch.bool)

    if noise is None:
        noise_device = generator.device if generator is not None else device
        noise = torch.randn(x0.shape, generator=generator, device=noise_device, dtype=torch.float32)
    if noise.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {tuple(x0.shape)}")
    noise = noise.to(device=device, dtype=x0.dtype)  # (B, C, F, H, W)
    if s is None:
        s = sample_timesteps(b, cfg, generator, num_tokens if num_tokens is not None else f * h * w)
    if s.shape != (b,):
        raise ValueError(f"s has shape {tuple(s.shape)}; expected (B,)=({b},)")
    s = s.to(device=device, dtype=torch.float32)

    if known_frames is None:
        s_in = s  # (B,)
    else:
        s_in = torch.where(known_frames, torch.zeros_like(s)[:, None], s[:, None])  # (B, F)
    x_s = interpolate(x0, noise, s_in)  # (B, C, F, H, W); known frames are exactly x0
    pred = model(x_s, NUM_TRAIN_TIMESTEPS * s_in, cond)
    if pred.shape != x0.shape:
        raise ValueError(f"model returned shape {tuple(pred.shape)}; expected {tuple(x0.shape)}")

    err = (pred.float() - velocity_target(x0, noise).float()).square()  # (B, C, F, H, W)
    if known_frames is None:
        per_sample = err.mean(dim=(1, 2, 3, 4))  # (B,)
        loss = err.mean()
        known_fraction = torch.zeros((), device=device)
    else:
        weight = (~known_frames).to(err.dtype)[:, None, :, None, None]  # (B, 1, F, 1, 1)
        counts = weight.expand(b, c, f, h, w).sum(dim=(1, 2, 3, 4))  # (B,)
        sums = (err * weight).sum(dim=(1, 2, 3, 4))  # (B,)
        per_sample = sums / counts.clamp_min(1e-6)
        loss = sums.sum() / counts.sum().clamp_min(1.0)
        known_fraction = known_frames.float().mean()
    stats = {
        "loss": loss.detach(),
        "s": s.detach(),
        "loss_per_sample": per_sample.detach(),
        "known_fraction": known_fraction,
    }
    return loss, stats

"""Shared transformer primitives: attention, MLP, norms, RoPE, timestep embedding.

Everything here is a pure function or a small `nn.Module` without buffers, so models built on
the meta device (see `tubelet.models.hub`) load without surprises.

Attention goes through the single function `attention()`; other backends (flash kernels,
sequence parallelism) are registered with `register_attention_backend()` and chosen per model (and
per kind, self or cross) with `set_attention_backend(model, name, kind=...)`.

Model code calls its `nn.Linear` / `nn.Conv*` modules like any PyTorch model (hooks, PEFT
LoRA, quantization and offload see every call); CPU kernel choices (oneDNN inner products and
convolutions) are installed from outside by `tubelet.kernels.apply_cpu_kernels`.

CPU performance note (measured on a 2-core AMD EPYC with AVX-512 BF16, torch 2.13 CPU build):
bfloat16 attention over long sequences runs about twice as fast as two oneDNN bf16 matmuls
around a softmax as through the fused CPU flash kernel (which has no fast bf16 path without
AMX); `attention()` picks that route for CPU bf16 attention in inference mode. It rounds
the scores to bf16 (the flash kernel keeps them in fp32); end to end the model's bf16 error
stays below diffusers' (see docs/performance.md).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------

AttentionFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]


def _expand_key_mask(mask: Tensor | None, q: Tensor, k: Tensor) -> Tensor | None:
    """(B, Nk) bool key mask -> (B, 1, 1, Nk) bool mask for SDPA; checks shapes."""
    if mask is None:
        return None
    b, nk = k.shape[0], k.shape[2]
    if mask.dtype != torch.bool or tuple(mask.shape) != (b, nk):
        raise ValueError(
            f"attention mask must be a bool tensor of shape {(b, nk)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    return mask[:, None, None, :]


def _attention_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_expand_key_mask(mask, q, k))


_LOWP_BLOCK_ELEMENTS = 1 << 24  # score-matrix elements per step of the CPU low-precision route


def _attention_cpu_lowp(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """bf16 attention on CPU as oneDNN bf16 matmuls around a softmax.

    q, k, v: (B, H, N, d). One (batch, head, query block) at a time: S = (q / sqrt(d)) k^T
    (fp32 accumulation, rounded to the compute dtype), P = softmax(S) (computed in fp32, then
    rounded to the compute dtype for P @ V, as the fused flash kernel does too), O = P v.
    Query blocks keep S within a fixed budget (2^24 elements).
    """
    b, h, nq, d = q.shape
    nk = k.shape[2]
    qs = (q.float() * (1.0 / math.sqrt(d))).to(q.dtype)  # (B, H, Nq, d), one rounding
    out = torch.empty((b, nq, h, d), dtype=q.dtype, device=q.device)  # (B, Nq, H, d)
    keep = None if mask is None else _expand_key_mask(mask, q, k)
    step = max(1, min(nq, _LOWP_BLOCK_ELEMENTS // max(nk, 1)))
    for i in range(b):
        for j in range(h):
            kt = k[i, j].transpose(0, 1)  # (d, Nk)
            for s0 in range(0, nq, step):
                s = torch.mm(qs[i, j, s0 : s0 + step], kt)  # (n, Nk)
                if keep is not None:
                    s.masked_fill_(~keep[i, 0], float("-inf"))
                torch.mm(torch.softmax(s, dim=-1), v[i, j], out=out[i, s0 : s0 + step, j])
    return out.transpose(1, 2)  # (B, H, Nq, d)


def _attention_auto(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    if (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and q.shape[2] >= 256
        and k.shape[2] >= 256
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    ):
        return _attention_cpu_lowp(q, k, v, mask)
    return _attention_sdpa(q, k, v, mask)


_ATTENTION_BACKENDS: dict[str, AttentionFn] = {
    "auto": _attention_auto,
    "sdpa": _attention_sdpa,
    "cpu_lowp": _attention_cpu_lowp,
}


def register_attention_backend(name: str, fn: AttentionFn) -> None:
    """Add an attention implementation `fn(q, k, v, mask) -> out` under `name` (a function table:
    registering changes no model; a model picks its backend with `set_attention_backend`)."""
    _ATTENTION_BACKENDS[name] = fn


def attention_backends() -> list[str]:
    """Names of the registered attention backends."""
    return sorted(_ATTENTION_BACKENDS)


def check_attention_backend(name: str) -> str:
    if name not in _ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; known: {sorted(_ATTENTION_BACKENDS)}")
    return name


def set_attention_backend(model: nn.Module, name: str, *, kind: str = "all") -> nn.Module:
    """Select the attention backend of every attention module of `model` (held per module, so two
    models in one process do not share the choice). kind: "self", "cross" or "all" (modules tell
    which they are by their `attention_kind` attribute). Returns `model`."""
    check_attention_backend(name)
    if kind not in ("self", "cross", "all"):
        raise ValueError(f"kind must be 'self', 'cross' or 'all', got {kind!r}")
    for m in model.modules():
        if hasattr(m, "attention_backend") and kind in ("all", getattr(m, "attention_kind", None)):
            typing.cast(Any, m).attention_backend = name  # a plain str attribute, not a submodule
    return model


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, backend: str = "auto") -> Tensor:
    """Multi-head scaled dot-product attention (softmax scale 1/sqrt(d), no dropout), by `backend`.

    q: (B, H, Nq, d); k, v: (B, H, Nk, d); mask: optional (B, Nk) bool, True = attend to this key.
    Returns (B, H, Nq, d) (possibly a non-contiguous view). Every row of `mask` needs at least one
    True entry (a row without any gives NaN, as in every softmax attention).
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention expects 4-D (B, H, N, d) tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    return _ATTENTION_BACKENDS[backend](q, k, v, mask)


# --------------------------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Linear -> activation -> Linear (`fc1`, `fc2`); activation "gelu_tanh" or "silu"."""

    def __init__(
        self, in_features: int, hidden: int, out_features: int, activation: str = "gelu_tanh"
    ) -> None:
        super().__init__()
        if activation not in ("gelu_tanh", "silu"):
            raise ValueError(f"MLP activation must be 'gelu_tanh' or 'silu', got {activation!r}")
        self.activation = activation
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def act(self, h: Tensor) -> Tensor:
        """The activation alone (a kernel plan may fuse it into `fc1`, see `tubelet.kernels`)."""
        return F.gelu(h, approximate="tanh") if self.activation == "gelu_tanh" else F.silu(h)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_features) -> (..., out_features)."""
        return self.fc2(self.act(self.fc1(x)))


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension with a learned per-channel weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, float32: bool = False) -> Tensor:
        """x: (..., dim). With `float32=True` normalise in (and return) float32, e.g. before RoPE."""
        if float32:
            x, w = x.float(), self.weight.float()
        else:  # under autocast x may be bf16 while the weight is fp32: match it, or no fused kernel
            w = self.weight.to(x.dtype)
        # contiguous(): the fused CPU kernel is orders of magnitude slower on strided input.
        return F.rms_norm(x.contiguous(), (x.shape[-1],), w, self.eps)


def modulated_layer_norm(x: Tensor, scale: Tensor, shift: Tensor, eps: float) -> Tensor:
    """`LayerNorm(x) * (1 + scale) + shift` with per-group modulation, result in x's dtype.

    x: (B, T, S, D) (T groups of S tokens each, e.g. T latent frames); scale, shift: (B, T, 1, D),
    any float dtype. With few groups each group is one fused layer_norm call with the modulation
    as its affine parameters (one rounding in low precision); otherwise a broadcast multiply-add.
    """
    b, t, _, d = x.shape
    if b * t <= 4:
        # The CPU kernel takes fp32 affine parameters with low-precision input (no extra rounding);
        # elsewhere they must match x's dtype.
        pdtype = torch.float32 if x.device.type == "cpu" else x.dtype
        w = (1 + scale.float()).to(pdtype)  # (B, T, 1, D)
        sh = shift.to(pdtype)
        if b * t == 1:
            return F.layer_norm(x, (d,), w.reshape(d), sh.reshape(d), eps)
        rows = [
            torch.stack([F.layer_norm(x[i, j], (d,), w[i, j, 0], sh[i, j, 0], eps) for j in range(t)])
            for i in range(b)
        ]
        return torch.stack(rows)
    y = F.layer_norm(x, (d,), None, None, eps)
    return torch.addcmul(shift.to(x.dtype), y, (1 + scale).to(x.dtype))


# --------------------------------------------------------------------------------------------
# Rotary position embedding (3-D, Wan layout: interleaved pairs, axes split as t | h | w)
# --------------------------------------------------------------------------------------------


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of one head given to (frame, row, column) positions, as Wan splits them."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_angles_3d(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0) -> Tensor:
    """Rotation angles for every token of an (F, H, W) grid, float64 on the CPU.

    Returns (F*H*W, head_dim // 2): for pair i of a head, the angle position * theta^(-2i/dim_axis)
    of the axis the pair belongs to (frame pairs first, then row, then column).
    """
    f, h, w = grid
    parts = []
    for n, dim in zip((f, h, w), rope_axis_dims(head_dim)):
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # (dim/2,)
        parts.append(torch.outer(torch.arange(n, dtype=torch.float64), inv))  # (n, dim/2)
    af, ah, aw = parts
    angles = torch.cat(
        [
            af[:, None, None, :].expand(f, h, w, -1),
            ah[None, :, None, :].expand(f, h, w, -1),
            aw[None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    )  # (F, H, W, head_dim/2)
    return angles.reshape(f * h * w, head_dim // 2)


def rope_freqs(angles: Tensor, device: torch.device | str) -> Tensor:
    """Unit rotations cos + i*sin as complex64 (N, 1, head_dim/2) on `device`.

    cos and sin are evaluated in float64 and rounded to float32 (the values Wan uses).
    """
    freqs = torch.complex(angles.cos().float(), angles.sin().float())[:, None, :]
    return freqs.to(device)


def apply_rope(x: Tensor, freqs: Tensor, out_dtype: torch.dtype | None = None) -> Tensor:
    """Rotate interleaved channel pairs (2i, 2i+1) of every head by the token's angle.

    x: (B, N, H, d) any float dtype; freqs: complex64 (N, 1, d/2) from `rope_freqs`. The pair
    (a, b) becomes (a cos - b sin, a sin + b cos), computed in float32 as one complex multiply;
    returns `out_dtype` (default: x's dtype), contiguous (B, N, H, d).
    """
    b, n, h, d = x.shape
    xc = torch.view_as_complex(x.float().reshape(b, n, h, d // 2, 2))  # (B, N, H, d/2)
    return torch.view_as_real(xc * freqs).reshape(b, n, h, d).to(out_dtype or x.dtype)


# --------------------------------------------------------------------------------------------
# Timestep embedding
# --------------------------------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (fractional) timesteps, [cos | sin] halves, float32.

    t: (...,) -> (..., dim). Frequencies exp(-ln(max_period) * i / (dim/2)), i = 0..dim/2-1
    (the layout Wan uses: cosines first, no frequency shift).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs  # (..., half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# --------------------------------------------------------------------------------------------
# Depthwise convolution over a small token grid
# --------------------------------------------------------------------------------------------

# Largest token grid (F' x H' x W') the dense form below serves; its per-channel matrices cost
# N^2 x D entries (64 MiB in float32 for N = 256, D = 256). Larger grids use `F.conv3d`.
TOKEN_CONV_DENSE_MAX_TOKENS = 256

# A memo of `_shift_matrices` (a pure function of its key, so sharing it between models changes no
# result); bounded, so changing grids in a long-lived process does not grow it.
_SHIFT_CACHE: dict[tuple[tuple[int, ...], int, str, torch.dtype, bool], Tensor] = {}
_SHIFT_CACHE_MAX = 16


def _shift_matrices(grid: tuple[int, int, int], k: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(k^3, N, N) 0/1 matrices: S[j, p, q] = 1 where token q is token p moved by kernel offset j
    (zero padding: offsets that leave the grid have no entry). j runs over (kf, kh, kw) in the
    order of a Conv3d weight's last three dimensions."""
    # inference-mode tensors cannot be saved for backward: those made under inference_mode are
    # cached apart from those a training step may use
    key = (tuple(grid), k, str(device), dtype, torch.is_inference_mode_enabled())
    s = _SHIFT_CACHE.get(key)
    if s is None:
        f, h, w = grid
        n, r = f * h * w, k // 2
        # token indices padded with -1: a window at offset (a, b, c) gives each output's source
        src = F.pad(torch.arange(n).view(f, h, w), (r, r, r, r, r, r), value=-1)
        p = torch.arange(n)
        s = torch.zeros(k, k, k, n, n)
        for a in range(k):
            for b in range(k):
                for c in range(k):
                    q = src[a : a + f, b : b + h, c : c + w].reshape(-1)  # (N,) source per output
                    ok = q >= 0
                    s[a, b, c, p[ok], q[ok]] = 1.0
        s = s.view(k**3, n, n).to(device=device, dtype=dtype)
        if len(_SHIFT_CACHE) >= _SHIFT_CACHE_MAX:
            _SHIFT_CACHE.clear()
        _SHIFT_CACHE[key] = s
    return s


def depthwise_conv3d_tokens(
    x: Tensor, weight: Tensor, bias: Tensor | None, grid: tuple[int, int, int]
) -> Tensor:
    """Depthwise, zero-padded, same-size 3-D convolution of tokens laid out on `grid`.

    x: (B, N, D) tokens with N = F'H'W' in (F', H', W') raster order; weight: (D, 1, k, k, k) (an
    `nn.Conv3d(D, D, k, padding=k // 2, groups=D)` weight); bias: (D,) or None -> (B, N, D).

    For small grids (N <= `TOKEN_CONV_DENSE_MAX_TOKENS`) the convolution is computed exactly as
    one batched matmul with a dense (N, N) matrix per channel, built from the k^3 weights: on a
    GPU this is several times faster than cuDNN's grouped 3-D convolution, whose weight gradient
    dominated a training step (docs/performance.md); every product and sum is the convolution's
    own, only summed in another order. Larger grids go through `F.conv3d`.
    """
    b, n, d = x.shape
    k = weight.shape[-1]
    if n > TOKEN_CONV_DENSE_MAX_TOKENS:
        g = x.reshape(b, *grid, d).permute(0, 4, 1, 2, 3)  # channels-last 3-D view
        return F.conv3d(g, weight, bias, padding=k // 2, groups=d).permute(0, 2, 3, 4, 1).reshape(b, n, d)
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    s = _shift_matrices(grid, k, x.device, dtype)  # (k^3, N, N)
    mats = torch.matmul(weight.reshape(d, k**3).to(dtype), s.view(k**3, n * n)).view(d, n, n)
    y = torch.bmm(x.to(dtype).permute(2, 0, 1), mats.transpose(1, 2))  # (D, B, N)
    y = y.permute(1, 2, 0)
    return y + bias.to(y.dtype) if bias is not None else y

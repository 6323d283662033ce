"""Building blocks of the causal video VAE: causal 3D convolutions with a streaming cache,
channel RMS norms, residual blocks, per-frame attention and the resample layers.

Every temporal operation is causal: an output frame only depends on the same and earlier
input frames. Each layer can run in two equivalent ways:

* whole clip at once (`cache=None`): the past side of time is zero padded;
* streaming (`cache=CausalCache()` shared over successive calls): the clip arrives in
  chunks and each layer keeps the last few frames it has seen (its "tail") in the cache, so
  memory stays flat however long the clip. Feeding a clip chunk by chunk gives the same
  result as feeding it whole.

Two layers treat the first frame of a clip specially (as in Wan): the temporal downsampler
passes the first frame through untouched and then merges frames (2i-2, 2i-1, 2i) into one;
the temporal upsampler passes the first frame through and turns every later frame into two.
So 1 + 4k frames map to 1 + k latent frames and back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CausalCache",
    "CausalConv3d",
    "ChannelRMSNorm",
    "Downsample",
    "FrameAttention",
    "MidBlock",
    "ResBlock",
    "Upsample",
]


class CausalCache:
    """Per-layer tails of past activations for chunk-by-chunk (streaming) processing.

    One cache serves one clip (one encode or one decode); start a new one for the next clip.
    Each entry holds at most two frames of one layer's input, so its size does not grow with
    the number of chunks processed.
    """

    def __init__(self) -> None:
        self._tails: dict[nn.Module, Tensor] = {}

    def get(self, layer: nn.Module) -> Tensor | None:
        """The stored tail of `layer`, or None at the start of a clip."""
        return self._tails.get(layer)

    def set(self, layer: nn.Module, tail: Tensor) -> None:
        """Store `tail` (B, C, t, H, W) as the frames `layer` must remember."""
        self._tails[layer] = tail

    def clear(self) -> None:
        """Forget everything (start of a new clip)."""
        self._tails.clear()

    def __len__(self) -> int:
        return len(self._tails)

    def shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the stored tails, in the order the layers first stored them."""
        return [tuple(t.shape) for t in self._tails.values()]

    def numel(self) -> int:
        """Total number of cached elements."""
        return sum(t.numel() for t in self._tails.values())

    def nbytes(self) -> int:
        """Total size of the cached tensors in bytes."""
        return sum(t.numel() * t.element_size() for t in self._tails.values())


def _frames_to_images(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W)."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def _images_to_frames(x: Tensor, b: int) -> Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W)."""
    bt, c, h, w = x.shape
    return x.reshape(b, bt // b, c, h, w).transpose(1, 2)


class CausalConv3d(nn.Conv3d):
    """3D convolution, "same" zero padding in space and `kernel_t - 1` frames of past-only
    padding in time (stride 1), so output frame t sees input frames t-kernel_t+1 .. t."""

    def __init__(self, in_channels: int, out_channels: int, kernel_t: int = 3, kernel_s: int = 3) -> None:
        super().__init__(
            in_channels,
            out_channels,
            (kernel_t, kernel_s, kernel_s),
            padding=(0, kernel_s // 2, kernel_s // 2),
        )
        self.tail = kernel_t - 1

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:  # (B, C, T, H, W)
        """Convolve `x`; with a cache, the previous chunk's last frames stand in for the padding."""
        if self.tail == 0:
            return self._conv_forward(x, self.weight, self.bias)
        past = cache.get(self) if cache is not None else None
        if cache is None and x.shape[2] == 1 and torch.is_grad_enabled():
            # One frame and no past (training on single images): the zero past frames add nothing,
            # so only the kernel's last time slice acts: a 2-D convolution with 1/kernel_t of the
            # work and of the stored activations. Same values as the 3-D route below.
            w2 = self.weight[:, :, -1]
            out = F.conv2d(x[:, :, 0], w2, self.bias, self.stride[1:], self.padding[1:], self.dilation[1:])
            return out.unsqueeze(2)
        if past is None:  # start of the clip: the past is zeros
            b, c, _, h, w = x.shape
            past = x.new_zeros(b, c, self.tail, h, w)
        x = torch.cat([past, x], dim=2)  # (B, C, tail + T, H, W)
        if cache is not None:
            # clone: a view would keep the whole chunk alive.
            cache.set(self, x[:, :, -self.tail :].clone())
        return self._conv_forward(x, self.weight, self.bias)


class ChannelRMSNorm(nn.Module):
    """RMS norm over the channel axis (dim 1) of (N, C, ...) tensors with a learnt gain.

    Computed as `x / max(||x||_2, 1e-12) * sqrt(C) * weight`, in float32 for half inputs."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.scale = dim**0.5

    def forward(self, x: Tensor) -> Tensor:
        low = x.dtype in (torch.float16, torch.bfloat16)
        y = F.normalize(x.float() if low else x, dim=1).to(x.dtype)
        gain = (self.weight * self.scale).view(-1, *([1] * (x.ndim - 2)))
        return y * gain


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv -> norm -> SiLU -> dropout -> causal conv, plus a skip
    (a 1x1x1 conv when the channel count changes)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0, time_kernel: int = 3) -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, time_kernel)
        self.norm2 = ChannelRMSNorm(out_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_dim, out_dim, time_kernel)
        self.skip = CausalConv3d(in_dim, out_dim, 1, 1) if in_dim != out_dim else None

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:  # (B, C, T, H, W)
        skip = x if self.skip is None else self.skip(x)
        x = self.conv1(F.silu(self.norm1(x)), cache)
        x = self.conv2(self.dropout(F.silu(self.norm2(x))), cache)
        return x + skip


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame separately (no time mixing)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = ChannelRMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:  # (B, C, T, H, W)
        b, c, t, h, w = x.shape
        y = self.norm(_frames_to_images(x))  # (BT, C, H, W)
        y = y.flatten(2).transpose(1, 2)  # (BT, HW, C)
        q, k, v = self.qkv(y).unsqueeze(1).chunk(3, dim=-1)  # 3 x (BT, 1, HW, C)
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (BT, HW, C)
        y = self.out(y).transpose(1, 2).reshape(b * t, c, h, w)
        return x + _images_to_frames(y, b)


class MidBlock(nn.Module):
    """Residual block, per-frame attention, residual block."""

    def __init__(self, dim: int, dropout: float = 0.0, time_kernel: int = 3) -> None:
        super().__init__()
        self.res_in = ResBlock(dim, dim, dropout, time_kernel)
        self.attn = FrameAttention(dim)
        self.res_out = ResBlock(dim, dim, dropout, time_kernel)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        return self.res_out(self.attn(self.res_in(x, cache)), cache)


class Downsample(nn.Module):
    """Halve H and W (3x3 stride-2 conv, zero pad on the right/bottom); with `temporal`, also
    halve time after the first frame: out[0] = in[0], out[i] = conv(in[2i-2], in[2i-1], in[2i])."""

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2)
        self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:  # (B, C, T, H, W)
        b = x.shape[0]
        x = self.conv(F.pad(_frames_to_images(x), (0, 1, 0, 1)))
        x = _images_to_frames(x, b)  # (B, C, T, H/2, W/2)
        if self.time_conv is None:
            return x
        past = cache.get(self) if cache is not None else None
        if past is None:  # start of the clip (1 + 2m frames): first frame passes through
            if x.shape[2] % 2 != 1:
                raise ValueError(
                    f"temporal downsampling expects 1 + 2m frames at the start, got {x.shape[2]}"
                )
            out = x[:, :, :1] if x.shape[2] == 1 else torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)
        else:  # continuation (2m frames): the previous chunk's last frame opens the first window
            if x.shape[2] % 2 != 0:
                raise ValueError(f"temporal downsampling expects an even number of frames, got {x.shape[2]}")
            out = self.time_conv(torch.cat([past, x], dim=2))
        if cache is not None:
            cache.set(self, x[:, :, -1:].clone())
        return out


class Upsample(nn.Module):
    """Double H and W (nearest, then a 3x3 conv to `out_dim` channels); with `temporal`, also
    double every frame after the first with a causal (3,1,1) conv to 2*dim channels whose two
    halves become the two output frames."""

    def __init__(self, dim: int, out_dim: int, temporal: bool) -> None:
        super().__init__()
        self.time_conv = CausalConv3d(dim, 2 * dim, 3, 1) if temporal else None
        self.conv = nn.Conv2d(dim, out_dim, 3, padding=1)

    def _double(self, x: Tensor, cache: CausalCache | None) -> Tensor:  # (B, C, T, H, W) -> (B, C, 2T, H, W)
        assert self.time_conv is not None
        b, c, t, h, w = x.shape
        y = self.time_conv(x, cache).view(b, 2, c, t, h, w)
        return y.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:  # (B, C, T, H, W)
        if self.time_conv is not None:
            started = cache is not None and cache.get(self.time_conv) is not None
            if started:
                x = self._double(x, cache)
            else:  # start of the clip: the first frame passes through, the rest start from zeros
                head, rest = x[:, :, :1], x[:, :, 1:]
                if cache is not None:
                    b, c, _, h, w = x.shape
                    cache.set(self.time_conv, x.new_zeros(b, c, self.time_conv.tail, h, w))
                x = head if rest.shape[2] == 0 else torch.cat([head, self._double(rest, cache)], dim=2)
        b = x.shape[0]
        y = F.interpolate(_frames_to_images(x), scale_factor=2.0, mode="nearest")
        return _images_to_frames(self.conv(y), b)

"""`Cond`: everything a denoiser is conditioned on besides the noisy input and its time.

One typed object travels through the objective (`flow_matching_loss`), the samplers' velocity
function, the model wrapper and the pipeline, so a new kind of conditioning is a new field here
and in the model that reads it, not a new argument in every signature.

Fields (batch-first; B = batch, L = text tokens, D = text width, C/F/H/W = latent grid):

* ``context`` (B, L, D) float: text states (an encoder's output). A jointly trained text encoder
  gets token ids instead: ``text_ids`` (B, L) or (B, L, k) int64 (an encoder's own token layout)
  with ``context = None``; the model wrapper
  (`tubelet.train.tasks.TextToVideoModel`) encodes them and hands the DiT a `Cond` with context.
* ``context_mask`` (B, L) bool or None: True = real token (None: all real).
* ``known_mask`` (B, F) bool or None: latent frames given clean (image-to-video, extension,
  interpolation, loops). Their per-frame noise level is 0; samplers keep them at ``known``
  (B, C, F, H, W) and the objective leaves them out of the loss (taking their values from x0).
* ``boxes``: a `Boxes` (box tracks per latent frame, Boximator-style motion control) or None; read
  by a box-controlled denoiser (`tubelet.models.box_adapter.BoxedDiT`), refused by a plain one.
* ``image_embeds`` (B, L_img, D_img) or None: reserved for image-encoder features (Wan I2V).

A model reads the fields it knows and must raise a clear error for a field it cannot use.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class Boxes:
    """Box tracks sampled at the latent frames (N tracks, padded with present = False).

    boxes (B, N, F', 4) float (x0, y0, x1, y1) in [0, 1]; present (B, N, F') bool (the track has a box
    at that latent frame); hard (B, N) bool (hard box: the object is exactly there; soft: stays inside);
    objects (B, N) int64 (the index of the prompt's object the track binds to).
    """

    boxes: Tensor
    present: Tensor
    hard: Tensor
    objects: Tensor

    def __post_init__(self) -> None:
        if self.boxes.ndim != 4 or self.boxes.shape[-1] != 4:
            raise ValueError(f"Boxes.boxes must be (B, N, F', 4), got shape {tuple(self.boxes.shape)}")
        b, n, f, _ = self.boxes.shape
        for name, want in (("present", (b, n, f)), ("hard", (b, n)), ("objects", (b, n))):
            got = tuple(getattr(self, name).shape)
            if got != want:
                raise ValueError(f"Boxes.{name} has shape {got}; expected {want}")

    @property
    def batch_size(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device | str) -> Boxes:
        return Boxes(*(getattr(self, f.name).to(device) for f in fields(self)))

    def expand(self, batch: int) -> Boxes:
        return Boxes(
            *(getattr(self, f.name).expand(batch, *getattr(self, f.name).shape[1:]) for f in fields(self))
        )

    @staticmethod
    def cat(items: list[Boxes]) -> Boxes:
        """Concatenate along the batch, padding the track axis with absent tracks."""
        n = max(x.boxes.shape[1] for x in items)
        out: list[list[Tensor]] = [[], [], [], []]
        for x in items:
            pad = n - x.boxes.shape[1]
            parts = [x.boxes, x.present, x.hard, x.objects]
            if pad:
                parts = [torch.cat([t, t.new_zeros(t.shape[0], pad, *t.shape[2:])], dim=1) for t in parts]
            for acc, t in zip(out, parts):
                acc.append(t)
        device = items[0].boxes.device
        return Boxes(*(torch.cat([t.to(device) for t in acc], dim=0) for acc in out))


@dataclass
class Cond:
    """Conditioning of a denoiser call (see the module doc for the shapes)."""

    context: Tensor | None = None
    context_mask: Tensor | None = None
    text_ids: Tensor | None = None
    known: Tensor | None = None
    known_mask: Tensor | None = None
    boxes: Boxes | None = None
    image_embeds: Tensor | None = None

    def __post_init__(self) -> None:
        if self.context is None and self.text_ids is None:
            raise ValueError("Cond needs context (B, L, D) text states or text_ids (B, L)")
        if self.context is not None and self.context.ndim != 3:
            raise ValueError(f"Cond.context must be (B, L, D), got shape {tuple(self.context.shape)}")
        if self.text_ids is not None and self.text_ids.ndim < 2:
            raise ValueError(f"Cond.text_ids must be (B, L, ...), got shape {tuple(self.text_ids.shape)}")
        lead = self.context if self.context is not None else self.text_ids
        assert lead is not None
        if self.context_mask is not None and tuple(self.context_mask.shape) != tuple(lead.shape[:2]):
            raise ValueError(
                f"Cond.context_mask has shape {tuple(self.context_mask.shape)}; expected (B, L) = "
                f"{tuple(lead.shape[:2])}"
            )
        if self.known is not None and self.known_mask is None:
            raise ValueError("Cond.known needs known_mask (B, F) saying which latent frames it holds")

    @property
    def batch_size(self) -> int:
        lead = self.context if self.context is not None else self.text_ids
        assert lead is not None
        return int(lead.shape[0])

    def replace(self, **changes: Any) -> Cond:
        """A copy with some fields changed (`dataclasses.replace`)."""
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> Cond:
        """The same conditioning with every tensor on `device`."""
        moved: dict[str, Any] = {
            f.name: v.to(device) if isinstance(v := getattr(self, f.name), (Tensor, Boxes)) else v
            for f in fields(self)
        }
        return Cond(**moved)

    def rows(self, index: slice) -> Cond:
        """The conditioning of batch rows `index` (views)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Boxes):
                v = Boxes(v.boxes[index], v.present[index], v.hard[index], v.objects[index])
            elif isinstance(v, Tensor):
                v = v[index]
            out[f.name] = v
        return Cond(**out)

    def expand(self, batch: int) -> Cond:
        """Broadcast a batch-1 conditioning to `batch` (views, no copies); a batch of `batch` is kept."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot expand a conditioning of batch {self.batch_size} to {batch}")
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Boxes):
                out[f.name] = v.expand(batch)
            else:
                out[f.name] = v.expand(batch, *v.shape[1:]) if isinstance(v, Tensor) else v
        return Cond(**out)

    @staticmethod
    def cat(conds: list[Cond]) -> Cond:
        """Concatenate conditionings along the batch (e.g. conditional + unconditional for guidance).

        Text states of different lengths are zero-padded to the longest, the padding masked out;
        every result has a context mask. Optional tensor fields must be given by all or by none.
        """
        if not conds:
            raise ValueError("Cond.cat needs at least one conditioning")
        if any(c.context is None for c in conds):
            raise ValueError("Cond.cat needs encoded text (context), not token ids")
        length = max(c.context.shape[1] for c in conds)  # type: ignore[union-attr]
        ctxs, masks = [], []
        dtype, device = conds[0].context.dtype, conds[0].context.device  # type: ignore[union-attr]
        for c in conds:
            ctx = c.context
            assert ctx is not None
            n, ln, d = ctx.shape
            mask = c.context_mask
            if mask is None:
                mask = torch.ones(n, ln, dtype=torch.bool, device=ctx.device)
            mask = mask.to(device=ctx.device, dtype=torch.bool)
            if ln < length:
                ctx = torch.cat([ctx, ctx.new_zeros(n, length - ln, d)], dim=1)
                mask = torch.cat([mask, mask.new_zeros(n, length - ln)], dim=1)
            ctxs.append(ctx.to(device=device, dtype=dtype))
            masks.append(mask.to(device))
        out: dict[str, Any] = {"context": torch.cat(ctxs, dim=0), "context_mask": torch.cat(masks, dim=0)}
        for name in ("known", "known_mask", "image_embeds"):
            vals = [getattr(c, name) for c in conds]
            given = [v is not None for v in vals]
            if any(given) and not all(given):
                raise ValueError(f"Cond.cat: {name} is set on some conditionings and not on others")
            if all(given):
                out[name] = torch.cat([v.to(device) for v in vals], dim=0)
        boxes = [c.boxes for c in conds]
        if any(b is not None for b in boxes):
            if not all(b is not None for b in boxes):
                raise ValueError("Cond.cat: boxes are set on some conditionings and not on others")
            out["boxes"] = Boxes.cat([b for b in boxes if b is not None])
        return Cond(**out)

"""`ShapesTextEncoder`: shapes-world prompts -> one context token per object plus a scene token.

The text encoder of the embedded default model. The shapes world's language is closed (a grammar of
colours, shapes, sizes, motions and backgrounds, in English and Chinese, with paraphrases; see
docs/shapes-world.md), so instead of learning to read bytes this encoder parses each prompt with the
world's own parser (`tubelet.recipes.shapes.grammar.parse_caption`) and embeds what it found:

    slot 0    the scene: the named background, `<unnamed>` when the prompt names none,
              or `<null>` for the empty prompt "" (the unconditional prompt of guidance)
    slot 1..  one per object, in the prompt's order: (colour, shape, size, motion)

A slot's vector is the sum of the embeddings of its attributes plus a slot-type embedding (scene or
object), followed by `num_layers` pre-norm self-attention blocks over the slots (no positions: the
objects are a set) and a final RMSNorm. Two properties follow by construction, and are why the
default model uses it (measured in docs/experiments/shapes-default-model.md): every attribute of an object arrives in that
object's own token, so the denoiser does not have to learn which words belong together; and an
English prompt and its Chinese translation give identical ids, hence identical videos.

Words outside the grammar raise `TextEncodingError` quoting the word and listing the vocabulary
(the parser's message). Interface as `ByteTextEncoder`:

    ids, mask = enc.tokenize(["a red circle moving left", "一个蓝色正方形静止不动"])
    ids   # (B, S, 4) long: per slot, four ids into `enc.vocab` (PAD = 0 where unused)
    mask  # (B, S) bool, True = real slot; S = 1 + the most objects in the batch
    enc(ids, mask)  # (B, S, D), zeros at padded slots
    enc.encode(texts)  # TextEmbedding
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from tubelet.config import check_model_limits
from tubelet.errors import CaptionError, ConfigError
from tubelet.models.hub import PretrainedMixin
from tubelet.models.layers import RMSNorm
from tubelet.models.text import TextBlock, TextEmbedding, TextEncodingError, check_texts, init_blocks
from tubelet.recipes.shapes.grammar import BACKGROUNDS, COLORS, MOTIONS, SHAPES, SIZES, parse_caption

__all__ = ["SHAPES_TEXT_PRESETS", "ShapesTextConfig", "ShapesTextEncoder", "shapes_vocab"]

FIELDS = 4  # ids per slot: (colour, shape, size, motion) for an object; (background, PAD x 3) for the scene
PAD, NULL, UNNAMED = "<pad>", "<null>", "<unnamed>"


def shapes_vocab() -> list[str]:
    """The attribute vocabulary: specials, then `kind:value` for every value of the shapes world."""
    words = [PAD, NULL, UNNAMED]
    words += [f"color:{c}" for c in COLORS] + [f"shape:{s}" for s in SHAPES]
    words += [f"size:{s}" for s in SIZES] + [f"motion:{m}" for m in MOTIONS]
    return words + [f"background:{b}" for b in BACKGROUNDS]


@dataclass
class ShapesTextConfig:
    """Configuration of `ShapesTextEncoder` (width, and the self-attention blocks over the slots)."""

    dim: int = 256
    num_layers: int = 1
    num_heads: int = 4
    ffn_dim: int = 1024
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check_model_limits(self)
        for name in ("dim", "num_heads", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ShapesTextConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_layers < 0:
            raise ConfigError(f"ShapesTextConfig.num_layers must be >= 0, got {self.num_layers}")
        if self.dim % self.num_heads:
            raise ConfigError(
                f"ShapesTextConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}"
            )


SHAPES_TEXT_PRESETS: dict[str, ShapesTextConfig] = {
    "shapes": ShapesTextConfig(),
    "shapes-tiny": ShapesTextConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64),
}


class ShapesTextEncoder(nn.Module, PretrainedMixin):
    """Parsed shapes-world prompts -> (B, S, D) slot tokens (see the module docstring)."""

    config_class: ClassVar[type] = ShapesTextConfig
    jointly_trainable: ClassVar[bool] = True  # the trainer trains it with the DiT (ids in, context out)

    def __init__(self, config: ShapesTextConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab = shapes_vocab()
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.embed = nn.Embedding(len(self.vocab), config.dim, padding_idx=0)
        self.slot_type = nn.Embedding(2, config.dim)  # 0 = scene, 1 = object
        self.blocks = nn.ModuleList([TextBlock(config) for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.dim, config.eps)
        self._init_weights()

    def _init_weights(self) -> None:
        # Unit-scale attribute embeddings: different prompts differ by O(1) from the first step.
        nn.init.normal_(self.embed.weight, std=1.0)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        nn.init.normal_(self.slot_type.weight, std=1.0)
        init_blocks(self.blocks)

    @property
    def dim(self) -> int:
        """Width D of the context."""
        return self.config.dim

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    # ---- tokenisation ----------------------------------------------------------------------

    def _slots(self, i: int, text: str) -> list[list[int]]:
        if not isinstance(text, str):
            raise TextEncodingError(f"text {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            return [[self.index[NULL], 0, 0, 0]]
        try:
            spec = parse_caption(text)
        except CaptionError as e:
            raise TextEncodingError(f"prompt {i}: {e}") from None
        scene = UNNAMED if spec.background is None else f"background:{spec.background}"
        slots = [[self.index[scene], 0, 0, 0]]
        for o in spec.objects:
            fields = (f"color:{o.color}", f"shape:{o.shape}", f"size:{o.size}", f"motion:{o.motion}")
            slots.append([self.index[w] for w in fields])
        return slots

    def prompt_objects(self, text: str) -> list[str]:
        """The objects a prompt names, in order, as English phrases (e.g. ["big red circle", ...]):
        what a box track's `object` (index, or a phrase) binds to."""
        from tubelet.recipes.shapes.grammar import parse_caption

        names = []
        for o in parse_caption(text).objects:
            size = "" if o.size == "medium" else o.size + " "
            names.append(f"{size}{o.color} {o.shape}")
        return names

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> ids (B, S, 4) long and mask (B, S) bool, on the CPU (see the module docstring)."""
        check_texts(texts)
        rows = [self._slots(i, t) for i, t in enumerate(texts)]
        length = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), length, FIELDS), dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
        return ids, mask

    def detokenize(self, ids: Tensor, mask: Tensor | None = None) -> list[list[list[str]]]:
        """ids (B, S, 4) -> per prompt, per slot, the attribute words (PAD dropped)."""
        out = []
        for i, row in enumerate(ids.detach().cpu().tolist()):
            keep = mask[i].tolist() if mask is not None else [True] * len(row)
            out.append([[self.vocab[t] for t in slot if t] for slot, k in zip(row, keep) if k])
        return out

    # ---- model -----------------------------------------------------------------------------

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids (B, S, 4) long, mask (B, S) bool -> context (B, S, D), zeros where mask is False."""
        if ids.dim() != 3 or ids.shape[-1] != FIELDS or ids.dtype != torch.long:
            raise ValueError(
                f"ids must be a (B, S, {FIELDS}) long tensor, got {tuple(ids.shape)} {ids.dtype}"
            )
        if mask.shape != ids.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a (B, S) bool tensor for ids {tuple(ids.shape)}, got {tuple(mask.shape)}"
            )
        if not bool(mask[:, 0].all()):
            raise ValueError("slot 0 (the scene) must be real in every row")
        if int(ids.min()) < 0 or int(ids.max()) >= len(self.vocab):
            raise ValueError(f"ids must lie in [0, {len(self.vocab)})")
        b, s, _ = ids.shape
        kind = torch.ones((b, s), dtype=torch.long, device=ids.device)
        kind[:, 0] = 0
        x = self.embed(ids).sum(dim=2) + self.slot_type(kind)  # (B, S, D)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, S)
        for blk in self.blocks:
            x = blk(x, None, None, attn_mask)
        x = self.norm(x)
        return x.masked_fill(~mask[..., None], 0.0)

    def encode(self, texts: list[str]) -> TextEmbedding:
        """Tokenise `texts` and run the encoder on the module's device."""
        ids, mask = self.tokenize(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return TextEmbedding(self(ids, mask), mask)

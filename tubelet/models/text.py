"""Text encoders: prompts -> (B, L, D) context for the DiT's cross-attention, plus a mask.

Text encoders share one interface, used by the generation pipeline and the trainer::

    emb = encoder.encode(["a red ball", "一只猫"])   # TextEmbedding
    emb.context  # (B, L, D) float, zeros at padded positions
    emb.mask     # (B, L) bool, True = real token
    encoder.dim  # D

`ByteTextEncoder`
    A small built-in encoder with no tokenizer files: UTF-8 bytes -> ids -> a bidirectional
    pre-norm transformer. It reads any language by construction (a Chinese character is three
    bytes) and is trained jointly with the DiT for the default model. Every text starts with a
    BOS token, so even the empty prompt "" has one real token and no cross-attention row is
    fully masked. Texts are padded to the longest text of the batch; a text longer than
    `config.max_length` bytes is an error (never silently truncated).

`HFTextEncoder`
    A `transformers` T5 / UMT5 encoder plus its tokenizer, read from a local directory only.
    Wan's convention: umT5-XXL, tokenise with padding to `max_length` (512) and truncation, run
    the encoder with the attention mask, then zero every position past each text's true length.

Other encoders (a recipe's, e.g. one that parses a closed prompt grammar) register their class
and presets with `tubelet.registry`; `load_text_encoder` and `build_text_encoder` find them there.

Directory layouts (`load_text_encoder(dir)` picks the class from `config.json`'s `_class`)::

    byte encoder dir/                   HF encoder dir/
      config.json  {"_class": "ByteTextEncoder", "dim": ..., ...}
      model.safetensors                   config.json  {"_class": "HFTextEncoder", "max_length": 512}
                                          model/       transformers format: config.json (model_type
                                                       "t5" or "umt5") + model.safetensors (or
                                                       sharded *.safetensors + model.safetensors.index.json)
                                          tokenizer/   transformers format: tokenizer.json and/or
                                                       spiece.model, tokenizer_config.json, ...
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tubelet import registry
from tubelet.config import check_model_limits, config_from_dict
from tubelet.errors import ConfigError, ModelLoadError, TubeletError
from tubelet.models.hub import CONFIG_NAME, PretrainedMixin, read_config_json
from tubelet.models.layers import RMSNorm

__all__ = [
    "BOS_ID",
    "BYTE_TEXT_PRESETS",
    "NUM_SPECIAL_TOKENS",
    "PAD_ID",
    "TEXT_ENCODER_CLASSES",
    "TEXT_ENCODER_PRESETS",
    "ByteTextConfig",
    "ByteTextEncoder",
    "HFTextEncoder",
    "TextBlock",
    "TextEmbedding",
    "TextEncodingError",
    "build_text_encoder",
    "jointly_trainable",
    "load_text_encoder",
]


class TextEncodingError(TubeletError, ValueError):
    """A prompt cannot be encoded (too long for the encoder, not valid text)."""


@dataclass
class TextEmbedding:
    """Encoded prompts: `context` (B, L, D), zeros where `mask` (B, L) is False (padding)."""

    context: Tensor  # (B, L, D)
    mask: Tensor  # (B, L) bool, True = real token

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> TextEmbedding:
        """Move the context (and mask) to `device`; cast the context to `dtype`."""
        return TextEmbedding(self.context.to(device=device, dtype=dtype), self.mask.to(device=device))


# --------------------------------------------------------------------------------------------
# ByteTextEncoder
# --------------------------------------------------------------------------------------------

PAD_ID = 0
BOS_ID = 1
NUM_SPECIAL_TOKENS = 4  # PAD, BOS and two ids reserved for later use; byte b has id b + 4
VOCAB_SIZE = 256 + NUM_SPECIAL_TOKENS


@dataclass
class ByteTextConfig:
    """Configuration of `ByteTextEncoder`.

    `max_length` is the largest number of UTF-8 bytes a text may have (the BOS token is not
    counted), so sequences are at most `max_length + 1` tokens long.
    """

    dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 1024
    max_length: int = 256
    rope_theta: float = 10000.0
    eps: float = 1e-6

    def __post_init__(self) -> None:
        check_model_limits(self)
        for name in ("dim", "num_layers", "num_heads", "ffn_dim", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ByteTextConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ConfigError(
                f"ByteTextConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}"
            )
        if (self.dim // self.num_heads) % 2:
            raise ConfigError(
                f"ByteTextConfig: head dim {self.dim // self.num_heads} must be even for rotary positions"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


BYTE_TEXT_PRESETS: dict[str, ByteTextConfig] = {
    "tiny": ByteTextConfig(dim=32, num_layers=2, num_heads=2, ffn_dim=64, max_length=64),
    "small": ByteTextConfig(dim=256, num_layers=4, num_heads=4, ffn_dim=1024, max_length=256),
}


def _rope_tables(length: int, head_dim: int, theta: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos/sin tables (L, head_dim/2) in float32 for positions 0..L-1 (computed on the fly)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    pos = torch.arange(length, device=device, dtype=torch.float32)
    angles = pos[:, None] * inv_freq[None, :]  # (L, hd/2)
    return angles.cos(), angles.sin()


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of the last dim of x (B, H, L, hd) by the position angles."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, L, hd/2) each
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


class TextBlock(nn.Module):
    """Pre-norm transformer block: masked bidirectional self-attention + GELU MLP.

    `cfg` needs `dim`, `num_heads`, `ffn_dim` and `eps` (a `ByteTextConfig` or another encoder's
    config); `forward(x (B, L, D), cos, sin, attn_mask (B, 1, 1, L))` with cos/sin None: no positions.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.attn_norm = RMSNorm(cfg.dim, cfg.eps)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor | None, sin: Tensor | None, attn_mask: Tensor) -> Tensor:
        b, n, d = x.shape  # (B, L, D)
        q, k, v = self.qkv(self.attn_norm(x)).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, hd)
        if cos is not None and sin is not None:  # rotary positions (None: a set, no positions)
            q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, hd)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_norm(x)), approximate="tanh"))


def check_texts(texts: object) -> None:
    """A text encoder's input must be a non-empty list (or tuple) of prompts."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TextEncodingError(f"expected a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise TextEncodingError("expected at least one text, got an empty list")


def init_blocks(blocks: nn.ModuleList, std: float = 0.02) -> None:
    """GPT-2 style init of `TextBlock`s: N(0, std), output projections scaled by 1/sqrt(2 * layers)."""
    out_std = std / math.sqrt(2 * max(1, len(blocks)))
    for m in blocks:
        blk = cast(TextBlock, m)  # a TextBlock (or a block with its qkv / fc1 / proj / fc2 layers)
        nn.init.normal_(blk.qkv.weight, std=std)
        nn.init.normal_(blk.fc1.weight, std=std)
        nn.init.normal_(blk.proj.weight, std=out_std)
        nn.init.normal_(blk.fc2.weight, std=out_std)


class ByteTextEncoder(nn.Module, PretrainedMixin):
    """Byte-level bidirectional transformer text encoder (no tokenizer files)."""

    config_class: ClassVar[type] = ByteTextConfig
    jointly_trainable: ClassVar[bool] = True  # the trainer trains it with the DiT (ids in, context out)

    def __init__(self, config: ByteTextConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(VOCAB_SIZE, config.dim)
        self.blocks = nn.ModuleList([TextBlock(config) for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.dim, config.eps)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.02)
        init_blocks(self.blocks)

    @property
    def dim(self) -> int:
        """Width D of the context."""
        return self.config.dim

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    # ---- tokenisation ----------------------------------------------------------------------

    def tokenize(self, texts: list[str], length: int | None = None) -> tuple[Tensor, Tensor]:
        """UTF-8 bytes -> ids (B, L) long and mask (B, L) bool, on the CPU.

        Each row is BOS followed by the text's bytes, padded with PAD to the longest text of the
        batch, or to `length` tokens (BOS included) if given. A text of more than
        `config.max_length` bytes raises TextEncodingError.
        """
        check_texts(texts)
        limit = self.config.max_length
        encoded: list[bytes] = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TextEncodingError(f"text {i} is a {type(t).__name__}, not a string")
            try:
                b = t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise TextEncodingError(f"text {i} is not valid Unicode ({e})") from None
            if len(b) > limit:
                raise TextEncodingError(
                    f"text {i} is {len(b)} UTF-8 bytes long, more than this encoder's max_length of {limit} "
                    f"bytes (text starts {t[:40]!r}); shorten the prompt"
                )
            encoded.append(b)
        longest = 1 + max(len(b) for b in encoded)
        if length is None:
            length = longest
        elif not longest <= length <= limit + 1:
            raise TextEncodingError(
                f"length {length} must lie between {longest} (longest text + BOS) and {limit + 1} (max_length + 1)"
            )
        ids = torch.full((len(encoded), length), PAD_ID, dtype=torch.long)
        for i, b in enumerate(encoded):
            ids[i, 0] = BOS_ID
            if b:
                ids[i, 1 : 1 + len(b)] = (
                    torch.frombuffer(bytearray(b), dtype=torch.uint8).long() + NUM_SPECIAL_TOKENS
                )
        mask = ids != PAD_ID
        return ids, mask

    @staticmethod
    def detokenize(ids: Tensor, mask: Tensor | None = None) -> list[str]:
        """Inverse of `tokenize`: ids (B, L) -> texts (special tokens and padding dropped)."""
        out = []
        for i, row in enumerate(ids.detach().cpu().tolist()):
            keep = mask[i].tolist() if mask is not None else [True] * len(row)
            data = bytes(t - NUM_SPECIAL_TOKENS for t, m in zip(row, keep) if m and t >= NUM_SPECIAL_TOKENS)
            out.append(data.decode("utf-8", errors="replace"))
        return out

    # ---- model -----------------------------------------------------------------------------

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids (B, L) long, mask (B, L) bool -> context (B, L, D), zeros where mask is False."""
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"ids must be a (B, L) long tensor, got {tuple(ids.shape)} {ids.dtype}")
        if mask.shape != ids.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a (B, L) bool tensor like ids {tuple(ids.shape)}, got {tuple(mask.shape)} {mask.dtype}"
            )
        length = ids.shape[1]
        if not 1 <= length <= self.config.max_length + 1:
            raise ValueError(f"sequence length {length} must lie in [1, {self.config.max_length + 1}]")
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every row of mask needs at least one True (real) token; rows start with BOS")
        x = self.embed(ids)  # (B, L, D)
        cos, sin = _rope_tables(length, self.config.head_dim, self.config.rope_theta, ids.device)  # (L, hd/2)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, L): padded keys are never attended
        for blk in self.blocks:
            x = blk(x, cos, sin, attn_mask)
        x = self.norm(x)
        return x.masked_fill(~mask[..., None], 0.0)  # (B, L, D)

    def encode(self, texts: list[str], length: int | None = None) -> TextEmbedding:
        """Tokenise `texts` (see `tokenize`) and run the encoder on the module's device."""
        ids, mask = self.tokenize(texts, length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return TextEmbedding(self(ids, mask), mask)


# --------------------------------------------------------------------------------------------
# HFTextEncoder
# --------------------------------------------------------------------------------------------

HF_MODEL_DIR = "model"
HF_TOKENIZER_DIR = "tokenizer"
_HF_ENCODERS = {"t5": "T5EncoderModel", "umt5": "UMT5EncoderModel"}


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: unescape HTML entities and collapse runs of whitespace."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def _check_hf_model_dir(d: Path) -> None:
    if not d.is_dir():
        raise ModelLoadError(
            f"{d}: text-encoder model folder not found; put a transformers T5/UMT5 encoder there "
            "(config.json + model.safetensors)"
        )
    if not (d / "config.json").is_file():
        raise ModelLoadError(f"{d}: missing config.json of the transformers T5/UMT5 encoder")
    if not (d / "model.safetensors").is_file() and not any(d.glob("*.safetensors.index.json")):
        raise ModelLoadError(
            f"{d}: missing weights; expected model.safetensors (or sharded *.safetensors with "
            "model.safetensors.index.json) in this folder"
        )


def _check_hf_tokenizer_dir(d: Path) -> None:
    if not d.is_dir():
        raise ModelLoadError(
            f"{d}: tokenizer folder not found; put the encoder's tokenizer files there "
            "(tokenizer.json or spiece.model, tokenizer_config.json)"
        )
    if not (d / "tokenizer.json").is_file() and not (d / "spiece.model").is_file():
        raise ModelLoadError(f"{d}: missing tokenizer files; expected tokenizer.json or spiece.model")


class HFTextEncoder(nn.Module):
    """A transformers T5 / UMT5 encoder and its tokenizer with Wan's encoding convention.

    The encoder is frozen: `encode` runs without gradients and the module is kept in eval mode.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 512, clean: bool = True) -> None:
        super().__init__()
        if max_length < 1:
            raise ConfigError(f"HFTextEncoder: max_length must be >= 1, got {max_length}")
        self.model: Any = model  # a transformers T5 / UMT5 encoder (`config`, `save_pretrained`, ...)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.max_length = max_length
        self.clean = clean

    @property
    def dim(self) -> int:
        """Width D of the context (the encoder's d_model)."""
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def tokenize(self, texts: list[str], max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """Texts -> ids (B, max_length) long, mask (B, max_length) bool, padded and truncated."""
        check_texts(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TextEncodingError(f"text {i} is a {type(t).__name__}, not a string")
        length = max_length or self.max_length
        prompts = [clean_prompt(t) for t in texts] if self.clean else list(texts)
        toks = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return toks["input_ids"], toks["attention_mask"].bool()

    @torch.no_grad()
    def encode(self, texts: list[str], max_length: int | None = None) -> TextEmbedding:
        """Encode texts to context (B, max_length, D), zero past each text's true length."""
        ids, mask = self.tokenize(texts, max_length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, L, D)
        return TextEmbedding(hidden.masked_fill(~mask[..., None], 0.0), mask)

    def forward(self, texts: list[str]) -> TextEmbedding:
        return self.encode(texts)

    def train(self, mode: bool = True) -> HFTextEncoder:
        """The encoder is frozen; it stays in eval mode (dropout off) whatever `mode` says."""
        return super().train(False)

    # ---- directories -----------------------------------------------------------------------

    @classmethod
    def from_hf(
        cls,
        model_dir: str | Path,
        tokenizer_dir: str | Path,
        *,
        max_length: int = 512,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> HFTextEncoder:
        """Load a transformers encoder folder and a tokenizer folder (local files only).

        `dtype=None` keeps the dtype stored in the model's config.json.
        """
        model_dir, tokenizer_dir = Path(model_dir), Path(tokenizer_dir)
        _check_hf_model_dir(model_dir)
        _check_hf_tokenizer_dir(tokenizer_dir)
        try:
            import transformers
        except ImportError:
            raise ModelLoadError(
                f"{model_dir}: loading a T5/UMT5 text encoder needs the `transformers` package "
                "(pip install 'tubelet[hf]')"
            ) from None
        try:
            hf_cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{model_dir / 'config.json'}: invalid JSON ({e})") from None
        model_type = hf_cfg.get("model_type")
        if model_type not in _HF_ENCODERS:
            raise ModelLoadError(
                f"{model_dir / 'config.json'}: model_type {model_type!r} is not supported; "
                f"expected one of {sorted(_HF_ENCODERS)}"
            )
        model_cls = getattr(transformers, _HF_ENCODERS[model_type])
        try:
            model = model_cls.from_pretrained(
                str(model_dir), local_files_only=True, dtype=dtype if dtype is not None else "auto"
            )
        except Exception as e:
            raise ModelLoadError(f"{model_dir}: cannot load the {model_cls.__name__} ({e})") from None
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        except Exception as e:
            raise ModelLoadError(f"{tokenizer_dir}: cannot load the tokenizer ({e})") from None
        model.requires_grad_(False)
        enc = cls(model.to(device), tokenizer, max_length=max_length)
        return enc.eval()

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> HFTextEncoder:
        """Load a tubelet HF text-encoder directory (see the module docstring for the layout)."""
        d = Path(directory)
        raw = read_config_json(d)
        name = raw.pop("_class", None)
        if name != cls.__name__:
            raise ModelLoadError(f"{d / CONFIG_NAME}: holds a {name!r}, not a {cls.__name__}")
        max_length = raw.pop("max_length", 512)
        clean = raw.pop("clean", True)
        if raw:
            raise ModelLoadError(
                f"{d / CONFIG_NAME}: unknown key(s) {sorted(raw)}; valid keys are ['_class', 'clean', 'max_length']"
            )
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ModelLoadError(
                f"{d / CONFIG_NAME}: max_length must be a positive integer, got {max_length!r}"
            )
        enc = cls.from_hf(
            d / HF_MODEL_DIR, d / HF_TOKENIZER_DIR, max_length=max_length, device=device, dtype=dtype
        )
        enc.clean = bool(clean)
        return enc

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, model/ (safetensors via transformers) and tokenizer/ into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(d / HF_MODEL_DIR))
        self.tokenizer.save_pretrained(str(d / HF_TOKENIZER_DIR))
        cfg = {"_class": type(self).__name__, "max_length": self.max_length, "clean": self.clean}
        from tubelet.core.files import atomic_write_json

        atomic_write_json(d / CONFIG_NAME, cfg)
        return d


# --------------------------------------------------------------------------------------------


# Text-encoder classes by the `_class` name a directory's config.json holds, and named configs of
# the encoders that can be built fresh (trained with the DiT). Recipes add theirs through
# `tubelet.registry` (kinds "text_encoder_class" and "text_encoder_preset").
TEXT_ENCODER_CLASSES: dict[str, type] = {"ByteTextEncoder": ByteTextEncoder, "HFTextEncoder": HFTextEncoder}
TEXT_ENCODER_PRESETS: dict[str, Any] = dict(BYTE_TEXT_PRESETS)


def jointly_trainable(encoder: nn.Module) -> bool:
    """Whether `encoder` can be trained with the DiT: `tokenize` gives ids and `forward(ids, mask)`
    the context (a class attribute `jointly_trainable = True`; frozen encoders like HF T5 lack it)."""
    return bool(getattr(encoder, "jointly_trainable", False))


def _class_of_config(config: Any, where: str) -> type:
    for name in registry.names("text_encoder_class"):
        cls = TEXT_ENCODER_CLASSES[name]
        if getattr(cls, "config_class", None) is type(config):
            return cls
    raise ConfigError(f"{where}: no registered text encoder is configured by a {type(config).__name__}")


def build_text_encoder(spec: Any, where: str = "text_encoder") -> nn.Module:
    """A new (randomly initialised) text encoder from a preset name, a config mapping or a config.

    A mapping's `_class` names the encoder class (default `ByteTextEncoder`); the other keys are
    its config's fields. Unknown presets or classes raise `ConfigError` listing what is available
    (the installed recipes' included).
    """
    if isinstance(spec, str):
        config = dataclasses.replace(registry.lookup("text_encoder_preset", spec))
    elif isinstance(spec, dict):
        fields = dict(spec)
        name = fields.pop("_class", "ByteTextEncoder")
        cls = registry.find("text_encoder_class", name) if isinstance(name, str) else None
        if cls is None or not hasattr(cls, "config_class"):
            buildable = [
                n
                for n in registry.names("text_encoder_class")
                if hasattr(TEXT_ENCODER_CLASSES[n], "config_class")
            ]
            raise ConfigError(
                f"{where}: _class {name!r} is not a text encoder built from a config; valid: {sorted(buildable)}"
            )
        config = config_from_dict(cls.config_class, fields, where=where)
    elif dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        config = spec
    else:
        raise ConfigError(f"{where}: expected a preset name, a mapping or a config, got {spec!r}")
    return _class_of_config(config, where)(config)


def load_text_encoder(
    directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """Load whichever text encoder `directory/config.json` names in `_class` (a registered class)."""
    raw = read_config_json(directory)
    name = raw.get("_class")
    cls = registry.find("text_encoder_class", name) if isinstance(name, str) else None
    if cls is None:
        raise ModelLoadError(
            f"{Path(directory) / CONFIG_NAME}: _class is {name!r}; a text encoder directory holds one of "
            f"{sorted(registry.names('text_encoder_class'))} (a recipe's class is found once its package is "
            "installed: pip install -e .)"
        )
    return cls.from_pretrained(directory, device=device, dtype=dtype)

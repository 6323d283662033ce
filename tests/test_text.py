"""Text encoders: the built-in byte encoder and the transformers T5/UMT5 wrapper."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tubelet.errors import ModelLoadError, TubeletError
from tubelet.models.text import (
    BOS_ID,
    BYTE_TEXT_PRESETS,
    NUM_SPECIAL_TOKENS,
    PAD_ID,
    ByteTextConfig,
    ByteTextEncoder,
    HFTextEncoder,
    TextEmbedding,
    TextEncodingError,
    load_text_encoder,
)

TEXTS = ["a red ball bounces", "", "一只红色的球在地板上弹跳", "the cat runs 猫在跑"]


def tiny_byte(seed: int = 0) -> ByteTextEncoder:
    torch.manual_seed(seed)
    return ByteTextEncoder(BYTE_TEXT_PRESETS["tiny"]).eval()


# ---------------------------------------------------------------------------------------------
# ByteTextEncoder
# ---------------------------------------------------------------------------------------------


def test_byte_shapes_mask_and_zero_padding():
    enc = tiny_byte()
    emb = enc.encode(TEXTS)
    assert isinstance(emb, TextEmbedding)
    lengths = [1 + len(t.encode("utf-8")) for t in TEXTS]
    assert emb.context.shape == (len(TEXTS), max(lengths), enc.dim)
    assert emb.mask.dtype == torch.bool
    assert emb.mask.sum(1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert emb.mask[i, :n].all() and not emb.mask[i, n:].any()
        assert torch.all(emb.context[i, n:] == 0)
        assert emb.context[i, :n].abs().sum(-1).min() > 0  # every real token carries signal
    assert torch.isfinite(emb.context).all()


def test_byte_tokenize_round_trip_english_and_chinese():
    enc = tiny_byte()
    ids, mask = enc.tokenize(TEXTS)
    assert ids.dtype == torch.long and ids.shape == mask.shape
    assert (ids[:, 0] == BOS_ID).all()
    assert (ids[~mask] == PAD_ID).all()
    assert ByteTextEncoder.detokenize(ids, mask) == TEXTS
    # a Chinese character is three UTF-8 bytes, each one token
    ids_zh, mask_zh = enc.tokenize(["猫"])
    assert mask_zh.sum().item() == 4
    assert bytes((ids_zh[0, 1:] - NUM_SPECIAL_TOKENS).tolist()).decode("utf-8") == "猫"


def test_byte_empty_prompt_has_bos():
    enc = tiny_byte()
    ids, mask = enc.tokenize([""])
    assert ids.tolist() == [[BOS_ID]] and mask.tolist() == [[True]]
    emb = enc.encode([""])
    assert emb.context.shape == (1, 1, enc.dim) and torch.isfinite(emb.context).all()
    assert emb.context.abs().sum() > 0


def test_byte_too_long_is_a_clear_error():
    enc = tiny_byte()
    limit = enc.config.max_length
    enc.tokenize(["x" * limit])  # exactly at the limit is fine
    with pytest.raises(TextEncodingError) as exc:
        enc.encode(["short", "y" * (limit + 1)])
    msg = str(exc.value)
    assert str(limit + 1) in msg and str(limit) in msg and "text 1" in msg
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, TubeletError)
    # a Chinese text that fits in characters but not in bytes
    with pytest.raises(TextEncodingError, match=str(3 * (limit // 3 + 1))):
        enc.tokenize(["猫" * (limit // 3 + 1)])


def test_byte_bad_inputs():
    enc = tiny_byte()
    with pytest.raises(TextEncodingError):
        enc.tokenize("not a list")  # type: ignore[arg-type]
    with pytest.raises(TextEncodingError):
        enc.tokenize([])
    with pytest.raises(TextEncodingError):
        enc.tokenize(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="mask"):
        enc(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one"):
        enc(torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.bool))


def test_byte_fixed_length_padding():
    enc = tiny_byte()
    ids, mask = enc.tokenize(["ab", "c"], length=10)
    assert ids.shape == (2, 10) and mask.sum(1).tolist() == [3, 2]
    with pytest.raises(TextEncodingError):
        enc.tokenize(["abc"], length=3)  # needs 4 tokens


def test_byte_determinism():
    a, b = tiny_byte(seed=3), tiny_byte(seed=3)
    ea, eb = a.encode(TEXTS).context, b.encode(TEXTS).context
    assert torch.equal(ea, eb)
    assert torch.equal(ea, a.encode(TEXTS).context)
    assert not torch.equal(ea, tiny_byte(seed=4).encode(TEXTS).context)


def test_byte_batch_invariance():
    enc = tiny_byte()
    batch = enc.encode(TEXTS)
    for i, t in enumerate(TEXTS):
        alone = enc.encode([t])
        n = alone.mask.shape[1]
        torch.testing.assert_close(batch.context[i, :n], alone.context[0], atol=1e-5, rtol=1e-5)
    # extra padding does not change anything either
    padded = enc.encode(TEXTS, length=enc.config.max_length + 1)
    torch.testing.assert_close(
        padded.context[:, : batch.context.shape[1]], batch.context, atol=1e-5, rtol=1e-5
    )


def test_byte_gradient_flow():
    enc = tiny_byte().train()
    emb = enc.encode(TEXTS)
    (emb.context**2).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_byte_save_load_round_trip(tmp_path):
    enc = tiny_byte(seed=5)
    enc.save_pretrained(tmp_path / "te")
    cfg = json.loads((tmp_path / "te" / "config.json").read_text())
    assert cfg["_class"] == "ByteTextEncoder"
    loaded = load_text_encoder(tmp_path / "te")
    assert isinstance(loaded, ByteTextEncoder)
    assert loaded.config == enc.config
    assert torch.equal(loaded.encode(TEXTS).context, enc.encode(TEXTS).context)
    direct = ByteTextEncoder.from_pretrained(tmp_path / "te", dtype=torch.bfloat16)
    assert direct.encode(["x"]).context.dtype == torch.bfloat16


def test_byte_config_validation():
    with pytest.raises(TubeletError, match="divisible"):
        ByteTextConfig(dim=30, num_heads=4)
    assert BYTE_TEXT_PRESETS["small"].dim == 256


# ---------------------------------------------------------------------------------------------
# HFTextEncoder
# ---------------------------------------------------------------------------------------------

SENTENCES = ["a red ball bounces on the floor", "the cat runs", "一只红色的球在地板上弹跳", "猫在跑"]


def make_tokenizer(directory):
    """A tiny Unigram T5 tokenizer built from a handful of sentences (English + Chinese)."""
    from transformers import T5Tokenizer

    pieces: dict[str, float] = {}
    for s in SENTENCES:
        for w in s.split():
            pieces["▁" + w] = -3.0
            for ch in w:
                pieces[ch] = -5.0
                pieces["▁" + ch] = -5.5
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), *sorted(pieces.items())]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    tok.save_pretrained(str(directory))
    return tok


def make_encoder(directory, kind: str, vocab_size: int):
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    common.update(relative_attention_num_buckets=8, relative_attention_max_distance=16)
    if kind == "umt5":
        model = transformers.UMT5EncoderModel(transformers.UMT5Config(**common))
    else:
        model = transformers.T5EncoderModel(transformers.T5Config(**common))
    model.save_pretrained(str(directory))
    return model.eval()


@pytest.fixture(scope="module", params=["umt5", "t5"])
def hf_dirs(request, tmp_path_factory):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp(f"hf_{request.param}")
    tok = make_tokenizer(root / "tokenizer")
    model = make_encoder(root / "text_encoder", request.param, len(tok))
    return root, model, tok


def reference_embedding(model, tok, texts, max_length):
    toks = tok(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=toks.input_ids, attention_mask=toks.attention_mask).last_hidden_state
    return out, toks.attention_mask.bool()


def test_hf_matches_transformers_and_zero_pads(hf_dirs, tmp_path):
    root, model, tok = hf_dirs
    enc = HFTextEncoder.from_hf(root / "text_encoder", root / "tokenizer")
    enc.save_pretrained(tmp_path / "te")
    assert json.loads((tmp_path / "te" / "config.json").read_text()) == {
        "_class": "HFTextEncoder",
        "max_length": 512,
        "clean": True,
    }
    loaded = load_text_encoder(tmp_path / "te")
    assert isinstance(loaded, HFTextEncoder) and loaded.dim == 16
    emb = loaded.encode(SENTENCES)
    assert emb.context.shape == (len(SENTENCES), 512, 16)
    ref, ref_mask = reference_embedding(model, tok, SENTENCES, 512)
    assert torch.equal(emb.mask, ref_mask)
    lengths = ref_mask.sum(1)
    assert (lengths > 1).all() and (lengths < 512).all()
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(emb.context[i, :n], ref[i, :n], atol=1e-6, rtol=0)
        assert torch.all(emb.context[i, n:] == 0)
        assert not torch.all(ref[i, n:] == 0)  # transformers itself does not zero the padding


def test_hf_truncation_and_custom_length(hf_dirs):
    root, model, tok = hf_dirs
    enc = HFTextEncoder.from_hf(root / "text_encoder", root / "tokenizer", max_length=6)
    long = " ".join(["the cat runs"] * 10)
    emb = enc.encode([long, "猫在跑"])
    assert emb.context.shape == (2, 6, 16)
    assert emb.mask[0].all()  # truncated to max_length
    ref, _ = reference_embedding(model, tok, [long, "猫在跑"], 6)
    torch.testing.assert_close(emb.context[0], ref[0], atol=1e-6, rtol=0)
    assert enc.encode(["猫"], max_length=9).context.shape == (1, 9, 16)


def test_hf_cleans_whitespace_like_wan(hf_dirs):
    root, _, _ = hf_dirs
    enc = HFTextEncoder.from_hf(root / "text_encoder", root / "tokenizer", max_length=16)
    a = enc.encode(["  the   cat\n runs "]).context
    b = enc.encode(["the cat runs"]).context
    assert torch.equal(a, b)


def test_hf_dtype_and_frozen(hf_dirs, tmp_path):
    root, _, _ = hf_dirs
    enc = HFTextEncoder.from_hf(root / "text_encoder", root / "tokenizer", max_length=8, dtype=torch.bfloat16)
    assert enc.dtype == torch.bfloat16
    assert enc.encode(["the cat"]).context.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training


def test_hf_missing_pieces_are_clear_errors(hf_dirs, tmp_path):
    root, _, _ = hf_dirs
    with pytest.raises(ModelLoadError, match="not found"):
        load_text_encoder(tmp_path / "nope")
    enc = HFTextEncoder.from_hf(root / "text_encoder", root / "tokenizer", max_length=8)
    enc.save_pretrained(tmp_path / "te")

    broken = tmp_path / "no_tok"
    shutil.copytree(tmp_path / "te", broken)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_text_encoder(broken)

    broken = tmp_path / "no_weights"
    shutil.copytree(tmp_path / "te", broken)
    (broken / "model" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        HFTextEncoder.from_pretrained(broken)

    broken = tmp_path / "no_model"
    shutil.copytree(tmp_path / "te", broken)
    shutil.rmtree(broken / "model")
    with pytest.raises(ModelLoadError, match="model"):
        load_text_encoder(broken)

    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"_class": "VideoDiT"}')
    with pytest.raises(ModelLoadError, match="VideoDiT"):
        load_text_encoder(tmp_path / "odd")

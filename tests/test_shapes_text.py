"""ShapesTextEncoder: shapes-world prompts -> a scene token + one token per object."""

from __future__ import annotations

import pytest
import torch

from tubelet.models.text import TextEncodingError, load_text_encoder
from tubelet.recipes.shapes.text import SHAPES_TEXT_PRESETS, ShapesTextConfig, ShapesTextEncoder


@pytest.fixture
def enc() -> ShapesTextEncoder:
    torch.manual_seed(0)
    return ShapesTextEncoder(SHAPES_TEXT_PRESETS["shapes-tiny"]).eval()


def test_slots_hold_each_objects_attributes(enc: ShapesTextEncoder) -> None:
    prompts = [
        "a big blue square moving up and a small yellow triangle staying still, on a white background",
        "a red circle moving left",
        "",
    ]
    ids, mask = enc.tokenize(prompts)
    assert ids.shape == (3, 3, 4) and ids.dtype == torch.long
    assert mask.tolist() == [[True, True, True], [True, True, False], [True, False, False]]
    words = enc.detokenize(ids, mask)
    assert words[0] == [
        ["background:white"],
        ["color:blue", "shape:square", "size:big", "motion:up"],
        ["color:yellow", "shape:triangle", "size:small", "motion:still"],
    ]
    assert words[1] == [["<unnamed>"], ["color:red", "shape:circle", "size:medium", "motion:left"]]
    assert words[2] == [["<null>"]]
    ctx = enc(ids, mask)
    assert ctx.shape == (3, 3, enc.dim)
    assert torch.all(ctx[~mask] == 0) and torch.all(ctx[mask].norm(dim=-1) > 0)


def test_english_chinese_and_paraphrases_give_the_same_context(enc: ShapesTextEncoder) -> None:
    same = [
        "a small purple circle moving down and an orange square moving right, on a black background",
        "一个小的紫色圆形向下移动和一个橙色正方形向右移动，黑色背景",
        "a tiny violet ball drifting down and a orange box heading right, against a black backdrop",
    ]
    emb = enc.encode(same)
    ids, _ = enc.tokenize(same)
    assert torch.equal(ids[0], ids[1]) and torch.equal(ids[0], ids[2])  # the same ids: the same context
    assert torch.allclose(emb.context[0], emb.context[1], atol=1e-6)
    assert torch.allclose(emb.context[0], emb.context[2], atol=1e-6)
    other = enc.encode(
        ["a small purple circle moving up and an orange square moving right, on a black background"]
    )
    assert not torch.allclose(other.context[0], emb.context[0])


def test_objects_are_a_set_and_batches_do_not_mix(enc: ShapesTextEncoder) -> None:
    a = enc.encode(["a red circle moving left and a blue square staying still"]).context[0]
    b = enc.encode(["a blue square staying still and a red circle moving left"]).context[0]
    assert torch.allclose(a[0], b[0], atol=1e-6)  # the scene token
    assert torch.allclose(a[1], b[2], atol=1e-6) and torch.allclose(a[2], b[1], atol=1e-6)
    alone = enc.encode(["a green triangle moving up"]).context[0]
    batched = enc.encode(
        ["a green triangle moving up", "a red circle moving left and a blue square staying still"]
    )
    assert torch.allclose(alone, batched.context[0, :2], atol=1e-6)


def test_unknown_words_and_bad_inputs_are_clear_errors(enc: ShapesTextEncoder) -> None:
    with pytest.raises(TextEncodingError, match="unknown word 'cat'"):
        enc.tokenize(["a red cat moving left"])
    with pytest.raises(TextEncodingError, match="names no motion"):
        enc.tokenize(["a red circle"])
    with pytest.raises(TextEncodingError, match="list of strings"):
        enc.tokenize("a red circle moving left")  # type: ignore[arg-type]
    with pytest.raises(TextEncodingError, match="at least one"):
        enc.tokenize([])
    with pytest.raises(TextEncodingError, match="not a string"):
        enc.tokenize([3])  # type: ignore[list-item]
    ids, mask = enc.tokenize(["a red circle moving left"])
    with pytest.raises(ValueError, match="long tensor"):
        enc(ids[..., :3], mask)
    with pytest.raises(ValueError, match="slot 0"):
        enc(ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="must lie in"):
        enc(ids + 1000, mask)


def test_gradients_reach_the_attribute_embeddings(enc: ShapesTextEncoder) -> None:
    enc.train()
    ids, mask = enc.tokenize(["a red circle moving left"])
    enc(ids, mask).sum().backward()
    red = enc.index["color:red"]
    assert enc.embed.weight.grad is not None and enc.embed.weight.grad[red].abs().sum() > 0
    assert enc.embed.weight.grad[0].abs().sum() == 0  # PAD stays zero


def test_save_load_round_trip(enc: ShapesTextEncoder, tmp_path) -> None:
    enc.save_pretrained(tmp_path / "te")
    back = load_text_encoder(tmp_path / "te")
    assert isinstance(back, ShapesTextEncoder) and back.config == enc.config
    p = ["a big green triangle moving right, on a gray background", "一个红色圆形静止不动"]
    assert torch.equal(back.encode(p).context, enc.encode(p).context)


def test_config_validation() -> None:
    with pytest.raises(Exception, match="divisible"):
        ShapesTextConfig(dim=30, num_heads=4)
    with pytest.raises(Exception, match="num_layers"):
        ShapesTextConfig(num_layers=-1)
    assert ShapesTextEncoder(ShapesTextConfig(dim=16, num_layers=0, num_heads=2, ffn_dim=16)).encode(
        ["a red circle moving up"]
    ).context.shape == (1, 2, 16)

"""`Cond`, the conditioning object of every denoiser call: validation, cat (padding), expand, to, replace."""

from __future__ import annotations

import pytest
import torch

from tubelet.diffusion import Cond
from tubelet.diffusion.cond import Cond as CondFromModule


def _ctx(b: int, length: int, d: int = 8, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(b, length, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_exported_from_tubelet_diffusion():
    assert Cond is CondFromModule


def test_cat_pads_text_and_masks_the_padding():
    a_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    a = Cond(context=_ctx(2, 5), context_mask=a_mask)
    b = Cond(context=_ctx(1, 3, seed=1, dtype=torch.float64))  # no mask: every token real
    c = Cond(context=_ctx(1, 7, seed=2), context_mask=torch.ones(1, 7, dtype=torch.bool))
    out = Cond.cat([a, b, c])
    assert out.batch_size == 4
    assert out.context.shape == (4, 7, 8) and out.context.dtype == torch.float32  # the first one's dtype
    assert out.context_mask.dtype == torch.bool and out.context_mask.shape == (4, 7)
    assert torch.equal(out.context[:2, :5], a.context) and (out.context[:2, 5:] == 0).all()
    assert torch.equal(out.context[2, :3], b.context[0].float()) and (out.context[2, 3:] == 0).all()
    assert torch.equal(out.context[3], c.context[0])
    assert torch.equal(out.context_mask[:2, :5], a_mask) and not out.context_mask[:2, 5:].any()
    assert out.context_mask[2].tolist() == [True] * 3 + [False] * 4
    assert out.context_mask[3].all()
    assert out.known is None and out.known_mask is None and out.image_embeds is None
    # One conditioning: the same text, now with an explicit mask.
    single = Cond.cat([b])
    assert torch.equal(single.context, b.context) and single.context_mask.all()


def test_cat_concatenates_known_frames_and_image_embeds():
    known = torch.randn(2, 4, 3, 2, 2)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    emb = torch.randn(2, 5, 6)
    a = Cond(context=_ctx(2, 3), known=known, known_mask=mask, image_embeds=emb)
    b = Cond(context=_ctx(1, 4), known=known[:1], known_mask=mask[:1], image_embeds=emb[:1])
    out = Cond.cat([a, b])
    assert torch.equal(out.known, torch.cat([known, known[:1]]))
    assert torch.equal(out.known_mask, torch.cat([mask, mask[:1]]))
    assert torch.equal(out.image_embeds, torch.cat([emb, emb[:1]]))


def test_cat_errors():
    with pytest.raises(ValueError, match="at least one"):
        Cond.cat([])
    with pytest.raises(ValueError, match="encoded text"):
        Cond.cat([Cond(context=_ctx(1, 2)), Cond(text_ids=torch.zeros(1, 2, dtype=torch.long))])
    known = Cond(
        context=_ctx(1, 2), known=torch.zeros(1, 4, 3, 2, 2), known_mask=torch.ones(1, 3, dtype=torch.bool)
    )
    with pytest.raises(ValueError, match="known is set on some"):
        Cond.cat([known, Cond(context=_ctx(1, 2))])
    with pytest.raises(ValueError, match="known_mask is set on some"):
        Cond.cat(
            [
                Cond(context=_ctx(1, 2), known_mask=torch.ones(1, 3, dtype=torch.bool)),
                Cond(context=_ctx(1, 2)),
            ]
        )
    with pytest.raises(ValueError, match="box"):
        Cond.cat([Cond(context=_ctx(1, 2), boxes=[[0, 0, 1, 1]]), Cond(context=_ctx(1, 2))])


def test_expand_broadcasts_batch_one_without_copies():
    mask = torch.tensor([[True, True, False]])
    one = Cond(context=_ctx(1, 3), context_mask=mask, known_mask=torch.ones(1, 2, dtype=torch.bool))
    four = one.expand(4)
    assert four.batch_size == 4
    assert (
        four.context.shape == (4, 3, 8)
        and four.context_mask.shape == (4, 3)
        and four.known_mask.shape == (4, 2)
    )
    assert four.context.data_ptr() == one.context.data_ptr() and four.context.stride(0) == 0  # a view
    assert all(torch.equal(four.context[i], one.context[0]) for i in range(4))
    assert four.text_ids is None and four.known is None
    assert one.expand(1) is one
    assert four.expand(4) is four
    with pytest.raises(ValueError, match="cannot expand a conditioning of batch 4 to 3"):
        four.expand(3)


def test_validation_of_inconsistent_shapes():
    with pytest.raises(ValueError, match=r"context \(B, L, D\) text states or text_ids"):
        Cond()
    with pytest.raises(ValueError, match=r"context must be \(B, L, D\)"):
        Cond(context=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="text_ids must be"):
        Cond(text_ids=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"context_mask has shape \(2, 4\); expected \(B, L\) = \(2, 5\)"):
        Cond(context=_ctx(2, 5), context_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="context_mask has shape"):  # checked against the ids too
        Cond(text_ids=torch.zeros(2, 5, dtype=torch.long), context_mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="known needs known_mask"):
        Cond(context=_ctx(1, 2), known=torch.zeros(1, 4, 3, 2, 2))
    ok = Cond(text_ids=torch.zeros(3, 5, dtype=torch.long), context_mask=torch.ones(3, 5, dtype=torch.bool))
    assert ok.batch_size == 3 and ok.context is None


def test_replace_and_to():
    a = Cond(context=_ctx(2, 3), boxes=["track"])
    mask = torch.tensor([[True, False, True], [True, True, True]])
    b = a.replace(context_mask=mask)
    assert b is not a and a.context_mask is None and b.context_mask is mask and b.context is a.context
    with pytest.raises(ValueError, match="context_mask has shape"):  # a replacement is validated too
        a.replace(context_mask=mask[:, :2])
    moved = b.to("meta")
    assert moved.context.device.type == "meta" and moved.context_mask.device.type == "meta"
    assert moved.boxes == ["track"]  # non-tensor fields are kept as they are
    assert b.context.device.type == "cpu"

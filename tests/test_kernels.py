"""CPU kernels installed from outside a model (tubelet.kernels): same numbers, same module calls.

`apply_cpu_kernels` swaps the class of every nn.Linear / nn.Conv2d / nn.Conv3d / MLP for one that only
changes the kernel call; these tests check that outputs and gradients stay those of PyTorch's kernels,
that the oneDNN path is really taken, and that everything that works by calling modules (forward hooks,
PEFT LoRA, replaced layers) still sees every call.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tubelet.kernels.cpu as kcpu
from tubelet.diffusion import Cond
from tubelet.kernels import apply_cpu_kernels, cpu_kernels_applied, remove_cpu_kernels
from tubelet.models.dit import DIT_PRESETS, VideoDiT, dit_config
from tubelet.models.layers import MLP
from tubelet.models.vae import VAE_PRESETS, CausalVideoVAE

TOL = 1e-5  # relative error: max|a - b| / max|b|
ONEDNN = kcpu._ONEDNN_LINEAR is not None and torch.backends.mkldnn.is_available()
NUM_LINEARS_TINY = 21  # patch/text(2)/time(2)/time_mod + 2 blocks x 7 + proj_out


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops are faster on one thread, and the machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def tiny_dit(seed: int = 0, **overrides) -> VideoDiT:
    """The "tiny" preset with every weight random (a fresh DiT's zero head would hide everything)."""
    cfg = dataclasses.replace(DIT_PRESETS["tiny"], **overrides) if overrides else dit_config("tiny")
    model = VideoDiT(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()) * 1.2)
    return model


def tiny_vae(seed: int = 0) -> CausalVideoVAE:
    torch.manual_seed(seed)
    model = CausalVideoVAE(VAE_PRESETS["tiny"]).eval()
    with torch.no_grad():  # non-trivial norm gains
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def dit_inputs(b: int = 2, f: int = 4, h: int = 4, w: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, f, h, w, generator=g)
    t = torch.rand(b, generator=g) * 1000
    ctx = torch.randn(b, 5, 32, generator=g)
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return x, t, Cond(context=ctx, context_mask=mask)


class Counter:
    """Wraps a kernel entry point and counts its calls (and the fused-GELU ones)."""

    def __init__(self, fn) -> None:
        self.fn, self.calls, self.fused = fn, 0, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.fused += len(args) > 3 and args[3] == "gelu"
        return self.fn(*args, **kwargs)


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts oneDNN inner-product calls made by the kernels (skips where the build has none)."""
    if not ONEDNN:
        pytest.skip("this torch build has no oneDNN linear")
    counter = Counter(kcpu._ONEDNN_LINEAR)
    monkeypatch.setattr(kcpu, "_ONEDNN_LINEAR", counter)
    return counter


def grads_of(model: nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [i.grad for i in inputs] + [p.grad for p in model.parameters()]


# --------------------------------------------------------------------------------------------
# The kernels alone (what `layers.linear()` used to be)
# --------------------------------------------------------------------------------------------


def test_kernel_linear_and_fused_mlp_match_pytorch(onednn_calls):
    torch.manual_seed(0)
    layer = nn.Linear(48, 80)
    gelu, silu = MLP(48, 80, 24, activation="gelu_tanh"), MLP(48, 80, 24, activation="silu")
    fast_layer, fast_gelu, fast_silu = (apply_cpu_kernels(copy.deepcopy(m)) for m in (layer, gelu, silu))
    x = torch.randn(3, 7, 48)
    with torch.inference_mode():
        assert rel_err(fast_layer(x), F.linear(x, layer.weight, layer.bias)) < TOL
        assert onednn_calls.calls == 1
        ref = gelu.fc2(F.gelu(F.linear(x, gelu.fc1.weight, gelu.fc1.bias), approximate="tanh"))
        assert rel_err(fast_gelu(x), ref) < TOL
        assert (onednn_calls.calls, onednn_calls.fused) == (3, 1)  # fc1 + GELU fused, then fc2
        assert rel_err(fast_silu(x), silu(x)) < TOL
        assert (onednn_calls.calls, onednn_calls.fused) == (5, 1)  # SiLU is not fused
    # Autograd path (training): PyTorch's kernels, the same gradients.
    for plain, fast in ((layer, fast_layer), (gelu, fast_gelu), (silu, fast_silu)):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        plain(xa).square().sum().backward()
        fast(xb).square().sum().backward()
        for a, b in zip(grads_of(plain, [xa]), grads_of(fast, [xb])):
            assert b is not None and rel_err(b, a) < TOL
    assert onednn_calls.calls == 5  # no oneDNN call under autograd


# --------------------------------------------------------------------------------------------
# Whole models: same outputs and gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{}, {"pooled_text": True, "conv_kernel": 3, "patch_size": (4, 2, 2)}],
    ids=["tiny", "tiny-conv-pooled"],
)
def test_dit_with_kernels_matches_without(overrides, onednn_calls):
    plain = tiny_dit(seed=1, **overrides)
    fast = apply_cpu_kernels(copy.deepcopy(plain))
    x, t, cond = dit_inputs(seed=2)
    per_frame = torch.tensor([[0.0, 0.0, 500.0, 500.0], [900.0, 900.0, 10.0, 10.0]])
    # no_grad, not inference_mode: the token convolution's memo of shift matrices
    # (layers._SHIFT_CACHE) would keep inference tensors that the training pass below cannot use.
    with torch.no_grad():
        for tt in (t, per_frame):
            assert rel_err(fast(x, tt, cond), plain(x, tt, cond)) < TOL
    assert onednn_calls.calls > 0
    # Training: gradients of the input and every parameter agree.
    plain.train()
    fast.train()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    plain(xa, t, cond).square().mean().backward()
    fast(xb, t, cond).square().mean().backward()
    for (name, _), a, b in zip(
        [("x", None), *plain.named_parameters()], grads_of(plain, [xa]), grads_of(fast, [xb])
    ):
        if a is None:  # token_conv's Conv3d module is read for its weights only
            assert b is None, name
            continue
        assert rel_err(b, a) < TOL, name


def test_vae_with_kernels_matches_without(monkeypatch):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    calls = Counter(torch.mkldnn_convolution)
    monkeypatch.setattr(torch, "mkldnn_convolution", calls)
    plain = tiny_vae(seed=3)
    fast = apply_cpu_kernels(copy.deepcopy(plain))
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.inference_mode():
        for chunked in (False, True):
            z_plain, z_fast = plain.encode(video, chunked=chunked), fast.encode(video, chunked=chunked)
            assert rel_err(z_fast, z_plain) < TOL
            assert (
                rel_err(fast.decode(z_plain, chunked=chunked), plain.decode(z_plain, chunked=chunked)) < TOL
            )
    assert calls.calls > 0
    # Training: the convolutions stay on oneDNN, and the gradients agree.
    plain.train()
    fast.train()
    n = calls.calls
    va, vb = video.clone().requires_grad_(), video.clone().requires_grad_()
    for model, v in ((plain, va), (fast, vb)):
        recon, mean, logvar = model(v)
        (recon.square().mean() + mean.square().mean() + logvar.exp().mean()).backward()
    assert calls.calls > n
    for (name, _), a, b in zip(
        [("video", None), *plain.named_parameters()], grads_of(plain, [va]), grads_of(fast, [vb])
    ):
        assert a is not None and b is not None, name
        assert rel_err(b, a) < TOL, name


# --------------------------------------------------------------------------------------------
# Module calls stay visible: hooks, replaced layers, PEFT LoRA
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", [False, True], ids=["pytorch", "kernels"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_forward_hooks_fire_on_every_linear(kernels, grad):
    model = tiny_dit(seed=5)
    if kernels:
        apply_cpu_kernels(model)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert len(linears) == NUM_LINEARS_TINY
    fired: dict[str, int] = dict.fromkeys(linears, 0)
    pre: dict[str, int] = dict.fromkeys(linears, 0)
    handles = []
    for name, m in linears.items():
        handles.append(
            m.register_forward_hook(lambda mod, i, o, name=name: fired.__setitem__(name, fired[name] + 1))
        )
        handles.append(
            m.register_forward_pre_hook(lambda mod, i, name=name: pre.__setitem__(name, pre[name] + 1))
        )
    global_calls: list[str] = []
    handles.append(
        torch.nn.modules.module.register_module_forward_hook(
            lambda mod, i, o: global_calls.append(type(mod).__name__) if isinstance(mod, nn.Linear) else None
        )
    )
    x, t, cond = dit_inputs(seed=6)
    try:
        with torch.set_grad_enabled(grad), torch.inference_mode(not grad):
            model(x.requires_grad_(grad), t, cond)
    finally:
        for h in handles:
            h.remove()
    assert fired == dict.fromkeys(linears, 1)
    assert pre == dict.fromkeys(linears, 1)
    assert len(global_calls) == NUM_LINEARS_TINY


def test_a_hook_that_changes_fc1_changes_the_fused_mlp():
    """A forward hook on an MLP's fc1 that alters its output takes effect with the kernels applied
    (the fused Linear+GELU is skipped while anything observes fc1), exactly as without them."""
    plain = tiny_dit(seed=7)
    fast = apply_cpu_kernels(copy.deepcopy(plain))
    x, t, cond = dit_inputs(seed=8)
    with torch.inference_mode():
        base = plain(x, t, cond)
        outs = []
        for model in (plain, fast):
            h = model.blocks[0].ffn.fc1.register_forward_hook(lambda mod, i, o: o + 0.5)
            outs.append(model(x, t, cond))
            h.remove()
        after = fast(x, t, cond)
    assert rel_err(outs[0], base) > 1e-3  # the hook mattered
    assert rel_err(outs[1], outs[0]) < TOL
    assert rel_err(after, base) < TOL  # hook removed: the fused path again


class WithDelta(nn.Module):
    """An adapter-style replacement: calls the original layer and adds a (low-rank) delta."""

    def __init__(self, base: nn.Linear, rank: int = 2, scale: float = 0.3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.base = base
        self.down = nn.Parameter(torch.randn(rank, base.in_features, generator=g) / base.in_features**0.5)
        self.up = nn.Parameter(scale * torch.randn(base.out_features, rank, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.down.T) @ self.up.T


def _replace(model: VideoDiT, zero: bool = False) -> VideoDiT:
    for i, blk in enumerate(model.blocks):
        for owner, attr in ((blk.ffn, "fc1"), (blk.self_attn, "qkv"), (blk.cross_attn, "kv")):
            w = WithDelta(getattr(owner, attr), seed=i)
            if zero:
                nn.init.zeros_(w.up)
            setattr(owner, attr, w)
    return model


def test_replaced_linears_are_called_with_kernels_applied(onednn_calls):
    """Without PEFT: layers replaced by a wrapper that calls the original (as LoRA / quantization
    do) behave the same with and without kernels; the fused MLP notices its replaced fc1."""
    plain = tiny_dit(seed=9)
    fast = apply_cpu_kernels(copy.deepcopy(plain))
    x, t, cond = dit_inputs(seed=10)
    with torch.inference_mode():
        base = plain(x, t, cond)
        fused_before = onednn_calls.fused
        fast(x, t, cond)
        fused_calls = onednn_calls.fused - fused_before
        assert fused_calls == 3  # text_embed + the two blocks' MLPs (time_embed is SiLU)
        zero = [_replace(copy.deepcopy(m), zero=True) for m in (plain, fast)]
        for m in zero:
            assert rel_err(m(x, t, cond), base) < TOL
        adapted = [_replace(copy.deepcopy(m)) for m in (plain, fast)]
        fused_before = onednn_calls.fused
        out_plain, out_fast = (m(x, t, cond) for m in adapted)
        assert onednn_calls.fused - fused_before == 1  # only text_embed is still fused
    assert rel_err(out_plain, base) > 1e-3  # the deltas matter
    assert rel_err(out_fast, out_plain) < TOL  # and the kernel-applied model computes them the same
    # The wrapped layers still run their oneDNN kernel.
    assert type(adapted[1].blocks[0].ffn.fc1.base) is kcpu._OneDNNLinear


LORA_TARGETS = r".*blocks\.\d+\.(self_attn\.(qkv|out)|cross_attn\.(q|kv|out)|ffn\.fc1)"


@pytest.mark.parametrize("how", ["inject_adapter_in_model", "get_peft_model"])
def test_peft_lora_on_a_kernel_applied_dit(how):
    peft = pytest.importorskip("peft")
    plain = tiny_dit(seed=11)
    fast = apply_cpu_kernels(copy.deepcopy(plain))
    x, t, cond = dit_inputs(seed=12)
    with torch.inference_mode():
        base = plain(x, t, cond)

    def lora(model: VideoDiT) -> nn.Module:
        cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS)
        if how == "inject_adapter_in_model":
            return peft.inject_adapter_in_model(cfg, model)
        return peft.get_peft_model(model, cfg)

    lp, lf = lora(copy.deepcopy(plain)), lora(copy.deepcopy(fast))
    targets = [n for n, m in lf.named_modules() if hasattr(m, "lora_B") and hasattr(m, "base_layer")]
    assert len(targets) == 2 * 6
    assert all(type(m.base_layer) is kcpu._OneDNNLinear for n, m in lf.named_modules() if n in targets)
    with torch.inference_mode():
        assert rel_err(lf(x, t, cond), base) < TOL  # B = 0 at init: the model is unchanged
    g = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for name, p in lp.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    lf.load_state_dict(lp.state_dict())  # the same adapters (A is random at init)
    with torch.inference_mode():
        out_plain, out_fast = lp(x, t, cond), lf(x, t, cond)
    assert rel_err(out_plain, base) > 1e-3
    assert rel_err(out_fast, out_plain) < TOL
    # LoRA training on the kernel-applied model: the adapters get gradients.
    lf.train()
    lf(x, t, cond).square().mean().backward()
    lora_grads = [p.grad for n, p in lf.named_parameters() if "lora_" in n]
    assert lora_grads and all(gr is not None and gr.abs().sum() > 0 for gr in lora_grads)


# --------------------------------------------------------------------------------------------
# Apply / remove
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [tiny_dit, tiny_vae], ids=["dit", "vae"])
def test_apply_is_idempotent_keeps_the_state_dict_and_remove_restores_classes(build):
    model = build()
    classes = {n: type(m) for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert not cpu_kernels_applied(model)
    assert apply_cpu_kernels(model) is model
    swapped = {n: type(m) for n, m in model.named_modules()}
    assert cpu_kernels_applied(model)
    for name, m in model.named_modules():
        old = classes[name]
        if old in (nn.Linear, MLP) or issubclass(old, (nn.Conv2d, nn.Conv3d)):
            assert type(m) is not old and isinstance(m, old), name
        else:
            assert type(m) is old, name
    assert any(issubclass(c, (nn.Conv2d, nn.Conv3d)) for c in classes.values()) or build is tiny_dit
    apply_cpu_kernels(model)  # idempotent
    assert {n: type(m) for n, m in model.named_modules()} == swapped
    sd = model.state_dict()
    assert list(sd) == list(state) and all(torch.equal(sd[k], v) for k, v in state.items())
    assert remove_cpu_kernels(model) is model
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert not cpu_kernels_applied(model)
    assert list(model.state_dict()) == list(state)


def test_skip_keeps_pytorch_kernels_below_the_named_modules():
    model = apply_cpu_kernels(tiny_dit(), skip=("time_mod", "blocks.1"))
    assert type(model.time_mod) is nn.Linear
    assert all(
        type(m) in (nn.Linear, MLP) or not isinstance(m, (nn.Linear, MLP)) for m in model.blocks[1].modules()
    )
    assert type(model.blocks[1].ffn) is MLP and type(model.blocks[0].ffn) is kcpu._FusedMLP
    assert type(model.blocks[0].self_attn.qkv) is kcpu._OneDNNLinear
    assert type(model.proj_out) is kcpu._OneDNNLinear

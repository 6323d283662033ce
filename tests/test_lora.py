"""LoRA on VideoDiT (tubelet.models.lora): attach / save / load / merge, every file format, and the references.

The references: PEFT's LoRA on the same (unfused) layers, and diffusers' own `WanPipeline.load_lora_weights`
on the diffusers transformer that the tubelet model was converted from.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from tubelet.diffusion import Cond
from tubelet.errors import ConfigError
from tubelet.models.dit import DIT_PRESETS, VideoDiT
from tubelet.models.lora import (
    LoRAConfig,
    LoRAError,
    attach_lora,
    detach_lora,
    load_lora,
    lora_parameters,
    merge_lora,
    read_lora_file,
    save_lora,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def tiny_dit(seed: int = 0) -> VideoDiT:
    torch.manual_seed(seed)
    dit = VideoDiT(dataclasses.replace(DIT_PRESETS["tiny"], num_layers=2)).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return dit


def inputs(dit: VideoDiT, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, Cond]:
    g = torch.Generator().manual_seed(seed)
    c = dit.config
    x = torch.randn(2, c.in_channels, 3, 4, 6, generator=g)
    return x, torch.tensor([900.0, 300.0]), Cond(context=torch.randn(2, 5, c.text_dim, generator=g))


def randomize(params: list[torch.nn.Parameter], seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def trained(seed: int = 0, **cfg) -> tuple[VideoDiT, VideoDiT]:
    """(base, the same model with a random-looking 'trained' LoRA)."""
    base = tiny_dit(seed)
    model = copy.deepcopy(base)
    randomize(attach_lora(model, LoRAConfig(**{"rank": 4, "alpha": 8.0, **cfg})))
    return base, model


def out(model: VideoDiT, seed: int = 1) -> torch.Tensor:
    x, t, cond = inputs(model, seed)
    with torch.no_grad():
        return model(x, t, cond)


# ------------------------------------------------------------------------------------------- modules


def test_a_new_adapter_changes_nothing_and_trains() -> None:
    base = tiny_dit()
    model = copy.deepcopy(base)
    params = attach_lora(model, LoRAConfig(rank=4, targets=["blocks"]))
    assert torch.equal(out(model), out(base))  # B = 0 at init
    # base state-dict keys are kept; the adapters add their own
    keys = set(model.state_dict())
    assert set(base.state_dict()) <= keys
    assert "blocks.0.self_attn.qkv.lora.adapters.default.1.lora_A.weight" in keys  # the k rows of qkv
    assert len(params) == 2 * 10 * 2 and params == lora_parameters(model)
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.train()
    x, t, cond = inputs(model)
    model(x, t, cond).square().mean().backward()
    assert all(p.grad is not None for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params if p.shape[0] != 4)  # B gets gradients first
    assert all(p.grad is None for n, p in model.named_parameters() if "lora" not in n)


def test_config_checks() -> None:
    for bad, match in (
        ({"rank": 0}, "rank"),
        ({"alpha": -1.0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"targets": ["attn", "mlp"]}, "unknown target 'mlp'"),
        ({"targets": []}, "targets is empty"),
        ({"blocks": [0, -1]}, "blocks"),
    ):
        with pytest.raises(ConfigError, match=match):
            LoRAConfig(**bad)
    assert LoRAConfig(targets=["attn1.to_q", "ffn.fc1"]).parts == ("self_attn.q", "ffn.0")  # aliases
    with pytest.raises(ConfigError, match="the model has 2 blocks"):
        attach_lora(tiny_dit(), LoRAConfig(blocks=[5]))


def test_merge_equals_the_adapters_and_detach_restores_the_base() -> None:
    base, model = trained(targets=["blocks", "embeddings"])
    with_lora = out(model)
    assert rel_err(with_lora, out(base)) > 1e-3
    merged = copy.deepcopy(model)
    merge_lora(merged)
    assert not any("lora" in k for k in merged.state_dict())
    assert rel_err(out(merged), with_lora) < 1e-5
    detach_lora(model)
    assert torch.equal(out(model), out(base))
    assert set(model.state_dict()) == set(base.state_dict())


def test_peft_gives_the_same_output_on_the_same_layers() -> None:
    peft = pytest.importorskip("peft")
    base, model = trained(targets=["self_attn.o", "cross_attn.q", "cross_attn.o", "ffn"], dropout=0.0)
    ref = peft.inject_adapter_in_model(
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=r".*blocks\.\d+\.(self_attn\.out|cross_attn\.(q|out)|ffn\.fc[12])",
        ),
        copy.deepcopy(base),
    )
    mine = {k: v for k, v in model.state_dict().items() if "lora" in k}
    theirs = {}
    for k, v in mine.items():  # blocks.0.ffn.fc1.lora.adapters.default.0.lora_A.weight -> PEFT's key
        layer, rest = k.split(".lora.adapters.default.0.")
        theirs[f"{layer}.{rest.replace('.weight', '.default.weight')}"] = v
    missing, unexpected = ref.load_state_dict(theirs, strict=False)
    assert not unexpected and not [m for m in missing if "lora" in m]
    assert rel_err(out(model), out(ref)) < 1e-6


# --------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("fmt", ["diffusers", "comfyui"])
def test_save_and_load_round_trip(fmt: str, tmp_path) -> None:
    base, model = trained(targets=["blocks", "embeddings"])
    path = save_lora(model, tmp_path / "style.safetensors", fmt=fmt)
    keys = set(load_file(path))
    if fmt == "diffusers":
        assert "transformer.blocks.0.attn1.to_k.lora_A.weight" in keys
        assert "transformer.condition_embedder.time_proj.lora_B.weight" in keys
    else:
        assert "diffusion_model.blocks.1.self_attn.o.lora_B.weight" in keys
        assert (
            "diffusion_model.blocks.1.ffn.2.alpha" in keys
            and "diffusion_model.head.head.lora_A.weight" in keys
        )
    again = copy.deepcopy(base)
    assert load_lora(again, path) == "style"
    assert rel_err(out(again), out(model)) < 1e-6
    # a scale multiplies the update; two adapters add up
    half = copy.deepcopy(base)
    load_lora(half, path, scale=0.5)
    load_lora(half, path, scale=0.5)
    assert rel_err(out(half), out(model)) < 1e-6


def test_kohya_and_lora_down_up_keys(tmp_path) -> None:
    base, model = trained(targets=["self_attn", "ffn"], rank=4, alpha=2.0)
    path = save_lora(model, tmp_path / "a.safetensors", fmt="comfyui")
    sd = load_file(path)
    kohya = {}
    for (
        k,
        v,
    ) in sd.items():  # diffusion_model.blocks.0.self_attn.q.lora_A.weight -> lora_unet_blocks_0_self_attn_q.lora_down.weight
        name, kind = (
            k.removeprefix("diffusion_model.").split(".lora_") if ".lora_" in k else (k[16:-6], "alpha")
        )
        kind = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight", "alpha": "alpha"}[kind]
        kohya[f"lora_unet_{name.replace('.', '_')}.{kind}"] = v
    save_file(kohya, tmp_path / "kohya.safetensors")
    assert read_lora_file(tmp_path / "kohya.safetensors", 2).source_format == "kohya"
    again = copy.deepcopy(base)
    load_lora(again, tmp_path / "kohya.safetensors")
    assert rel_err(out(again), out(model)) < 1e-6


def test_bad_files_name_the_problem_and_load_nothing(tmp_path) -> None:
    base, model = trained()
    path = save_lora(model, tmp_path / "a.safetensors")
    sd = load_file(path)
    save_file(
        {**sd, "transformer.blocks.0.attn1.to_qq.lora_A.weight": torch.zeros(4, 8)},
        tmp_path / "typo.safetensors",
    )
    save_file({**sd, "transformer.blocks.7.attn1.to_q.lora_A.weight": torch.zeros(4, 8),
               "transformer.blocks.7.attn1.to_q.lora_B.weight": torch.zeros(8, 4)}, tmp_path / "deep.safetensors")  # fmt: skip
    k = "transformer.blocks.0.attn1.to_q.lora_A.weight"
    save_file({**sd, k: torch.zeros(4, 3)}, tmp_path / "shape.safetensors")
    save_file({kk: v for kk, v in sd.items() if kk != k}, tmp_path / "half.safetensors")
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    cases = {
        "typo": r"1 key\(s\) name no layer of this model: transformer\.blocks\.0\.attn1\.to_qq\.lora_A\.weight",
        "deep": r"blocks\.7\.attn1\.to_q\.lora_A\.weight.*2 blocks",
        "shape": r"blocks\.0\.self_attn\.q: A has shape \(4, 3\), this model needs \(4, \d+\)",
        "half": r"blocks\.0\.self_attn\.q has lora_B without its pair",
        "junk": "not a readable safetensors file",
    }
    for stem, match in cases.items():
        m = copy.deepcopy(base)
        with pytest.raises(LoRAError, match=match):
            load_lora(m, tmp_path / f"{stem}.safetensors")
        assert set(m.state_dict()) == set(base.state_dict())  # nothing attached
    with pytest.raises(LoRAError, match="pickled weights are never loaded"):
        load_lora(copy.deepcopy(base), tmp_path / "a.pt")
    with pytest.raises(LoRAError, match="not found"):
        load_lora(copy.deepcopy(base), tmp_path / "nope.safetensors")
    with pytest.raises(LoRAError, match="no LoRA adapter named"):
        save_lora(base, tmp_path / "none.safetensors")


# ------------------------------------------------------------------------------------ diffusers itself


@pytest.mark.parametrize("fmt", ["diffusers", "comfyui"])
def test_diffusers_load_lora_weights_gives_the_same_output(fmt: str, tmp_path) -> None:
    pytest.importorskip("peft")
    diffusers = pytest.importorskip("diffusers")
    from test_convert import TEXT_DIM, Z_DIM, make_transformer

    from tubelet.convert.wan_transformer import convert_transformer_state_dict, dit_config_from_diffusers

    ref = make_transformer()
    cfg = dit_config_from_diffusers(dict(ref.config))
    dit = VideoDiT(cfg).eval()
    dit.load_state_dict(convert_transformer_state_dict(ref.state_dict(), cfg))
    randomize(attach_lora(dit, LoRAConfig(rank=4, alpha=2.0, targets=["blocks", "embeddings"])))
    path = save_lora(dit, tmp_path / f"{fmt}.safetensors", fmt=fmt)

    pipe = diffusers.WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=ref,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip
    pipe.load_lora_weights(str(path))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, Z_DIM, 3, 4, 6, generator=g)
    t = torch.tensor([999.0, 250.0])
    ctx = torch.randn(2, 7, TEXT_DIM, generator=g)
    with torch.no_grad():
        want = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
        got = dit(x, t, Cond(context=ctx))
        detach_lora(dit)
        plain = dit(x, t, Cond(context=ctx))
    assert rel_err(got, plain) > 1e-3  # the LoRA matters
    assert rel_err(got, want) < 1e-5


# ----------------------------------------------------------------------------------- runs, pipeline, CLI


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    """A tiny base model, a LoRA run on it (4 steps) and the same run stopped at 2 and resumed."""
    from tubelet.recipes.shapes import write_dataset
    from tubelet.train.config import resolve_train_config
    from tubelet.train.trainer import train

    root = tmp_path_factory.mktemp("lora")
    data = root / "data"
    write_dataset(data, 6, seed=0, frames=5, size=16, fps=8.0, progress=False)
    base = root / "base"
    train(
        resolve_train_config("tiny", overrides={"max_steps": 2, "save_every": 0}), data, base, progress=False
    )

    def cfg(steps: int):
        return resolve_train_config("tiny", overrides={
            "max_steps": steps, "save_every": 2, "init_from": str(base / "model"), "optim": {"lr": 5e-3},
            "lora": {"rank": 4, "alpha": 8.0, "targets": ["attn", "ffn"]},
        })  # fmt: skip

    train(cfg(4), data, root / "straight", progress=False)
    train(cfg(2), data, root / "resumed", progress=False)
    train(cfg(4), data, root / "resumed", resume=True, progress=False)
    return {
        "root": root,
        "data": data,
        "base": base / "model",
        "run": root / "straight",
        "resumed": root / "resumed",
    }


def test_a_lora_run_trains_only_the_adapters_and_exports_lora_files(lora_runs) -> None:
    from tubelet.models.hub import load_safetensors
    from tubelet.models.lora import COMFYUI_FILE, DIFFUSERS_FILE
    from tubelet.train import checkpoint as ckpt

    run = lora_runs["run"]
    out = run / "model"
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", DIFFUSERS_FILE, COMFYUI_FILE])
    sd = load_file(out / DIFFUSERS_FILE)
    assert len(sd) == 2 * 2 * 10 and all(k.startswith("transformer.blocks.") for k in sd)
    assert any(v.abs().max() > 0 for k, v in sd.items() if "lora_B" in k)  # B moved from 0
    # checkpoints hold the adapters only (the base comes from init_from)
    state = load_safetensors(ckpt.latest_checkpoint(run) / "model.safetensors")
    assert state and all(".lora." in k for k in state)
    # resumed == uninterrupted, bit for bit
    a = load_file(lora_runs["resumed"] / "model" / DIFFUSERS_FILE)
    assert a.keys() == sd.keys() and all(torch.equal(a[k], sd[k]) for k in sd)
    # `tubelet export` of a LoRA run's checkpoint writes the same LoRA directory
    from tubelet.train.trainer import export_checkpoint

    again = export_checkpoint(run, lora_runs["root"] / "exported")
    b = load_file(again / DIFFUSERS_FILE)
    assert all(torch.equal(b[k], sd[k]) for k in sd)


def test_pipeline_load_unload_fuse_and_the_cli(lora_runs, tmp_path) -> None:
    import json as _json

    import numpy as np
    from typer.testing import CliRunner

    from tubelet.cli import app
    from tubelet.pipelines import load_pipeline

    base, lora = lora_runs["base"], lora_runs["run"] / "model"
    pipe = load_pipeline(base)
    kw = {"seed": 3, "num_inference_steps": 3, "progress": False}
    plain = pipe("a red circle moving right", **kw).frames
    name = pipe.load_lora(lora, scale=1.0)
    with_lora = pipe("a red circle moving right", **kw)
    assert not np.array_equal(with_lora.frames, plain)
    assert with_lora.metadata["loras"] == [
        {"name": name, "file": str(lora / "pytorch_lora_weights.safetensors"), "scale": 1.0}
    ]
    pipe.unload_lora()
    assert np.array_equal(pipe("a red circle moving right", **kw).frames, plain)
    with pytest.raises(LoRAError, match="no LoRA named 'x'"):
        pipe.unload_lora("x")

    runner = CliRunner()
    merged = tmp_path / "merged"
    r = runner.invoke(app, ["lora", "merge", str(base), "--lora", f"{lora}:1.0", "--out", str(merged)])
    assert r.exit_code == 0, r.output
    assert (merged / "text_encoder").is_dir() and (merged / "config.json").is_file()
    fused = load_pipeline(merged)("a red circle moving right", **kw).frames
    # the merged model makes the LoRA's clip (up to float rounding in a few pixels)
    assert np.abs(fused.astype(int) - with_lora.frames.astype(int)).max() <= 2
    r = runner.invoke(app, ["lora", "merge", str(base), "--lora", str(lora), "--out", str(merged)])
    assert r.exit_code != 0 and "exists and is not empty" in str(r.exception or r.output)

    out = tmp_path / "clip.mp4"
    r = runner.invoke(app, ["generate", "a red circle moving right", "--model", str(base), "--lora", f"{lora}:0.5",
                            "--steps", "2", "--seed", "1", "--out", str(out), "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    from tubelet.media import sidecar_path

    meta = _json.loads(sidecar_path(out).read_text())
    assert meta["loras"][0]["scale"] == 0.5

    comfy = tmp_path / "c.safetensors"
    r = runner.invoke(app, ["lora", "convert", str(lora), str(comfy), "--to", "comfyui"])
    assert r.exit_code == 0, r.output
    assert any(k.startswith("diffusion_model.blocks.0.self_attn.q.") for k in load_file(comfy))
    r = runner.invoke(app, ["lora", "inspect", str(comfy)])
    assert r.exit_code == 0 and "format: comfyui" in r.output and "ranks: [4]" in r.output


def test_lora_run_config_errors(lora_runs) -> None:
    from tubelet.train.config import resolve_train_config

    with pytest.raises(ConfigError, match="set init_from"):
        resolve_train_config("tiny", overrides={"lora": {}})
    with pytest.raises(ConfigError, match=r"lora\.rank"):
        resolve_train_config("tiny", overrides={"lora": {"rank": 0}, "init_from": str(lora_runs["base"])})
    with pytest.raises(ConfigError, match="unknown target"):
        resolve_train_config(
            "tiny", overrides={"lora": {"targets": ["qkv"]}, "init_from": str(lora_runs["base"])}
        )

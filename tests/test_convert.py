"""`tubelet convert wan`: diffusers Wan pipelines / components -> tubelet directories.

Tiny random diffusers / transformers models are saved into a fake diffusers pipeline
directory, converted through the CLI, loaded with tubelet and compared with the references.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file

from tubelet.cli import main
from tubelet.convert.wan import (
    convert_wan,
    detect_source,
    find_weight_files,
    read_diffusers_weights,
)
from tubelet.errors import ConversionError
from tubelet.models.text import HFTextEncoder, load_text_encoder

TEXT_DIM = 16
Z_DIM = 4
LATENTS_MEAN = [0.1, -0.2, 0.3, 0.0]
LATENTS_STD = [1.5, 0.5, 2.0, 1.0]
PROMPTS = ["a red ball bounces on the floor", "一只红色的球在地板上弹跳", ""]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `tubelet ...` in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def make_transformer():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(1)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=Z_DIM,
        out_channels=Z_DIM,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=48,
        num_layers=2,
        rope_max_seq_len=32,
    )
    # diffusers zero-initialises nothing here, but randomise every tensor anyway so that a
    # mapping mistake (e.g. swapped norms that start at ones) cannot hide.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def make_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(2)
    model = AutoencoderKLWan(
        base_dim=8,
        z_dim=Z_DIM,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=LATENTS_MEAN,
        latents_std=LATENTS_STD,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def wan_src(tmp_path_factory):
    """A diffusers WanPipeline directory with tiny random components (and the live models)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from test_text import make_encoder, make_tokenizer

    root = tmp_path_factory.mktemp("wan")
    tok = make_tokenizer(root / "parts" / "tokenizer")
    text_encoder = make_encoder(root / "parts" / "text_encoder", "umt5", len(tok))
    transformer, vae = make_transformer(), make_vae()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    pipe = WanPipeline(
        tokenizer=tok, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.save_pretrained(str(root / "pipe"))
    return {
        "dir": root / "pipe",
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tok,
    }


@pytest.fixture(scope="module")
def converted(wan_src, tmp_path_factory):
    """The pipeline converted once through the CLI (float32)."""
    dst = tmp_path_factory.mktemp("out") / "tubelet_wan"
    code = 0
    try:
        main(["convert", "wan", str(wan_src["dir"]), str(dst), "--dtype", "float32"])
    except SystemExit as e:
        code = e.code
    assert code in (0, None)
    return dst


# ---------------------------------------------------------------------------------------------
# the converted pipeline against the references
# ---------------------------------------------------------------------------------------------


def test_pipeline_layout_and_config(converted):
    for sub in ("transformer", "vae", "text_encoder"):
        assert (converted / sub / "config.json").is_file()
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["_class"] == "TextToVideoPipeline"
    assert cfg["shift"] == 5.0  # from the scheduler's flow_shift
    assert cfg["latents_mean"] == LATENTS_MEAN and cfg["latents_std"] == LATENTS_STD
    assert cfg["vae_scale_factor_spatial"] == 8 and cfg["vae_scale_factor_temporal"] == 4
    assert (cfg["height"], cfg["width"], cfg["num_frames"], cfg["fps"]) == (480, 832, 81, 16)
    assert cfg["sampler"] == "unipc" and cfg["num_inference_steps"] == 50 and cfg["guidance_scale"] == 5.0
    assert isinstance(cfg["negative_prompt"], str)
    # nothing left behind next to DST
    assert sorted(p.name for p in converted.parent.iterdir()) == [converted.name]


def test_transformer_matches_diffusers(wan_src, converted):
    from tubelet.diffusion import Cond
    from tubelet.models.dit import VideoDiT

    ref = wan_src["transformer"]
    dit = VideoDiT.from_pretrained(converted / "transformer")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, Z_DIM, 3, 4, 6, generator=g)  # odd latent frame count, non-square
    t = torch.tensor([999.0, 250.0])
    ctx = torch.randn(2, 7, TEXT_DIM, generator=g)
    with torch.no_grad():
        want = ref(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
        got = dit(x, t, Cond(context=ctx))
    assert got.shape == want.shape == x.shape
    assert rel_err(got, want) <= 1e-5


def test_vae_matches_diffusers(wan_src, converted):
    from tubelet.models.vae import CausalVideoVAE

    ref = wan_src["vae"]
    vae = CausalVideoVAE.from_pretrained(converted / "vae")
    assert list(vae.config.latents_mean) == LATENTS_MEAN
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 9, 16, 24, generator=g) * 2 - 1  # 9 frames -> 3 latent frames
    with torch.no_grad():
        want_z = ref.encode(video).latent_dist.mean
        got_z = vae.encode(video)
        assert got_z.shape == want_z.shape == (1, Z_DIM, 3, 2, 3)
        assert rel_err(got_z, want_z) <= 1e-5
        want_x = ref.decode(want_z).sample  # diffusers clamps to [-1, 1]
        got_x = vae.decode(want_z).clamp(-1, 1)
    assert got_x.shape == want_x.shape == video.shape
    assert rel_err(got_x, want_x) <= 1e-5


def test_text_encoder_matches_transformers(wan_src, converted):
    enc = load_text_encoder(converted / "text_encoder")
    assert isinstance(enc, HFTextEncoder) and enc.dim == TEXT_DIM and enc.max_length == 512
    emb = enc.encode(PROMPTS)
    tok, model = wan_src["tokenizer"], wan_src["text_encoder"]
    toks = tok(PROMPTS, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=toks.input_ids, attention_mask=toks.attention_mask).last_hidden_state
    mask = toks.attention_mask.bool()
    assert torch.equal(emb.mask, mask)
    want = ref.masked_fill(~mask[..., None], 0.0)
    assert emb.context.shape == (3, 512, TEXT_DIM)
    assert (emb.context - want).abs().max().item() <= 1e-6


# ---------------------------------------------------------------------------------------------
# single components, weight formats, dtype
# ---------------------------------------------------------------------------------------------


def test_single_component_sources(wan_src, converted, tmp_path, capsys):
    from tubelet.models.dit import VideoDiT
    from tubelet.models.vae import CausalVideoVAE

    src = wan_src["dir"]
    assert detect_source(src) == "pipeline"
    assert detect_source(src / "transformer") == "transformer"
    assert detect_source(src / "vae") == "vae"

    code, stdout, err = run_cli(["convert", "wan", str(src / "transformer"), str(tmp_path / "dit")], capsys)
    assert code == 0, err
    assert "transformer" in err  # progress messages go to stderr
    assert stdout.strip() == str(tmp_path / "dit")
    a = VideoDiT.from_pretrained(tmp_path / "dit").state_dict()
    b = VideoDiT.from_pretrained(converted / "transformer").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    code, _, err = run_cli(
        ["convert", "wan", str(src / "vae"), str(tmp_path / "vae"), "--dtype", "bfloat16"], capsys
    )
    assert code == 0, err
    vae16 = CausalVideoVAE.from_pretrained(tmp_path / "vae")
    ref = CausalVideoVAE.from_pretrained(converted / "vae").state_dict()
    for k, v in vae16.state_dict().items():
        assert v.dtype == torch.bfloat16
        assert torch.equal(v, ref[k].to(torch.bfloat16))


def test_sharded_and_pickled_weights(wan_src, converted, tmp_path):
    from tubelet.models.vae import CausalVideoVAE

    ref = CausalVideoVAE.from_pretrained(converted / "vae").state_dict()
    wan_src["vae"].save_pretrained(str(tmp_path / "sharded"), max_shard_size="200KB")
    files = find_weight_files(tmp_path / "sharded")
    assert len(files) > 1 and all(f.suffix == ".safetensors" for f in files)
    assert read_diffusers_weights(tmp_path / "sharded").keys() == wan_src["vae"].state_dict().keys()
    convert_wan(tmp_path / "sharded", tmp_path / "from_shards", log=lambda m: None)
    got = CausalVideoVAE.from_pretrained(tmp_path / "from_shards").state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)

    wan_src["vae"].save_pretrained(str(tmp_path / "pickled"), safe_serialization=False)
    assert [f.name for f in find_weight_files(tmp_path / "pickled")] == ["diffusion_pytorch_model.bin"]
    convert_wan(tmp_path / "pickled", tmp_path / "from_bin", log=lambda m: None)
    got = CausalVideoVAE.from_pretrained(tmp_path / "from_bin").state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)

    # a missing shard is named
    shard = next(f for f in (tmp_path / "sharded").glob("*.safetensors"))
    shard.unlink()
    with pytest.raises(ConversionError, match=shard.name):
        convert_wan(tmp_path / "sharded", tmp_path / "nope", log=lambda m: None)


# ---------------------------------------------------------------------------------------------
# error paths
# ---------------------------------------------------------------------------------------------


def test_missing_source(tmp_path, capsys):
    code, _, err = run_cli(["convert", "wan", str(tmp_path / "absent"), str(tmp_path / "dst")], capsys)
    assert code == 1
    assert err.startswith("error: ") and "absent" in err and "not found" in err and err.count("\n") == 1
    assert not (tmp_path / "dst").exists()

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(ConversionError, match="WanTransformer3DModel"):
        convert_wan(tmp_path / "plain", tmp_path / "dst")


def test_pipeline_without_transformer(wan_src, tmp_path, capsys):
    src = tmp_path / "pipe"
    shutil.copytree(wan_src["dir"], src, ignore=shutil.ignore_patterns("transformer"))
    code, _, err = run_cli(["convert", "wan", str(src), str(tmp_path / "dst")], capsys)
    assert code == 1 and "transformer/" in err and "model_index.json" in err
    assert not (tmp_path / "dst").exists()


def test_pipeline_without_tokenizer_or_weights(wan_src, tmp_path):
    src = tmp_path / "pipe"
    shutil.copytree(wan_src["dir"], src, ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(ConversionError, match="tokenizer/"):
        convert_wan(src, tmp_path / "dst")
    shutil.rmtree(src)
    shutil.copytree(wan_src["dir"], src)
    (src / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"diffusion_pytorch_model\.safetensors"):
        convert_wan(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def _corrupt_one_tensor(directory, name: str) -> tuple[int, ...]:
    path = directory / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(path))
    assert name in sd, sorted(sd)[:10]
    sd[name] = sd[name][:-1].clone()  # one row short
    save_file(sd, str(path), metadata={"format": "pt"})
    return tuple(sd[name].shape)


def test_wrong_shape_names_the_tensor(wan_src, tmp_path, capsys):
    src = tmp_path / "transformer"
    shutil.copytree(wan_src["dir"] / "transformer", src)
    _corrupt_one_tensor(src, "blocks.1.attn2.to_k.weight")
    code, _, err = run_cli(["convert", "wan", str(src), str(tmp_path / "dst")], capsys)
    assert code == 1
    assert "blocks.1.attn2.to_k.weight" in err and "shape" in err
    assert not (tmp_path / "dst").exists()

    vae = tmp_path / "vae"
    shutil.copytree(wan_src["dir"] / "vae", vae)
    _corrupt_one_tensor(vae, "decoder.conv_in.weight")
    with pytest.raises(ConversionError, match=r"decoder\.conv_in\.weight"):
        convert_wan(vae, tmp_path / "dst2", log=lambda m: None)


def test_existing_destination_is_kept_without_overwrite(wan_src, tmp_path, capsys):
    from tubelet.models.vae import CausalVideoVAE

    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep me")
    code, _, err = run_cli(["convert", "wan", str(wan_src["dir"] / "vae"), str(dst)], capsys)
    assert code == 1 and "--overwrite" in err
    assert (dst / "precious.txt").read_text() == "keep me"

    # --overwrite with a broken source: the old DST survives untouched
    broken = tmp_path / "broken_vae"
    shutil.copytree(wan_src["dir"] / "vae", broken)
    _corrupt_one_tensor(broken, "encoder.conv_in.weight")
    code, _, err = run_cli(["convert", "wan", str(broken), str(dst), "--overwrite"], capsys)
    assert code == 1 and "encoder.conv_in.weight" in err
    assert (dst / "precious.txt").read_text() == "keep me"

    # --overwrite with a good source replaces it
    code, _, err = run_cli(["convert", "wan", str(wan_src["dir"] / "vae"), str(dst), "--overwrite"], capsys)
    assert code == 0, err
    assert not (dst / "precious.txt").exists()
    CausalVideoVAE.from_pretrained(dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken_vae", "dst"]  # no staging leftovers

    # an empty existing directory is fine without --overwrite
    (tmp_path / "empty").mkdir()
    convert_wan(wan_src["dir"] / "vae", tmp_path / "empty", log=lambda m: None)
    assert (tmp_path / "empty" / "config.json").is_file()


def test_destination_inside_source_is_refused(wan_src, tmp_path):
    src = tmp_path / "vae"
    shutil.copytree(wan_src["dir"] / "vae", src)
    with pytest.raises(ConversionError, match="outside the source"):
        convert_wan(src, src / "out")
    with pytest.raises(ConversionError, match="outside the source"):
        convert_wan(src, src, overwrite=True)
    assert (src / "diffusion_pytorch_model.safetensors").is_file()


def test_bad_dtype_and_unsupported_pipelines(wan_src, tmp_path, capsys):
    code, _, err = run_cli(
        ["convert", "wan", str(wan_src["dir"]), str(tmp_path / "d"), "--dtype", "int8"], capsys
    )
    assert code == 2 and "int8" in err  # rejected by the CLI itself
    with pytest.raises(ConversionError, match="dtype"):
        convert_wan(wan_src["dir"], tmp_path / "d", dtype="float64")
    src = tmp_path / "pipe"
    shutil.copytree(wan_src["dir"], src, ignore=shutil.ignore_patterns("transformer", "vae", "text_encoder"))
    index = json.loads((src / "model_index.json").read_text())
    index["_class_name"] = "WanImageToVideoPipeline"
    (src / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="WanImageToVideoPipeline"):
        convert_wan(src, tmp_path / "d")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_weights_with_code_are_refused(wan_src, tmp_path, capsys):
    src = tmp_path / "vae"
    src.mkdir()
    shutil.copy(wan_src["dir"] / "vae" / "config.json", src / "config.json")
    torch.save({"encoder.conv_in.weight": _Evil()}, src / "diffusion_pytorch_model.bin")
    with pytest.raises(ConversionError, match="safely"):
        convert_wan(src, tmp_path / "dst", log=lambda m: None)
    assert "this must never run" not in capsys.readouterr().out
    assert not (tmp_path / "dst").exists()


# ---------------------------------------------------------------------------------------------
# the whole generation against diffusers' WanPipeline (text encoding, sampler, VAE decode), with a LoRA
# ---------------------------------------------------------------------------------------------


def _wan_pipeline(wan_src):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    return WanPipeline(
        tokenizer=wan_src["tokenizer"], text_encoder=wan_src["text_encoder"], vae=wan_src["vae"],
        scheduler=scheduler, transformer=wan_src["transformer"],
    )  # fmt: skip


@pytest.mark.parametrize("with_lora", [False, True], ids=["base", "lora"])
def test_generation_matches_wan_pipeline(wan_src, converted, tmp_path, with_lora):
    """tubelet's converted pipeline and diffusers' WanPipeline make the same clip from the same noise."""
    import copy

    import numpy as np

    from tubelet.pipelines import load_pipeline

    pipe = load_pipeline(converted)
    ref = _wan_pipeline(wan_src)
    ref.transformer = copy.deepcopy(ref.transformer)  # a LoRA must not leak into the shared fixture
    if with_lora:
        from tubelet.models.lora import LoRAConfig, attach_lora, detach_lora, save_lora

        g = torch.Generator().manual_seed(3)
        params = attach_lora(pipe.transformer, LoRAConfig(rank=4, alpha=8.0, targets=["blocks"]))
        with torch.no_grad():
            for p in params:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        path = save_lora(pipe.transformer, tmp_path / "lora.safetensors")
        detach_lora(pipe.transformer)
        pipe.load_lora(path, scale=1.0)
        ref.load_lora_weights(str(path))
    settings = {"num_frames": 5, "height": 32, "width": 48, "num_inference_steps": 4, "guidance_scale": 4.0}
    prompt, negative = PROMPTS[0], "blurry, static"
    got = pipe(prompt, negative_prompt=negative, seed=7, sampler="unipc", progress=False, **settings)
    noise = torch.randn((1, Z_DIM, 2, 4, 6), generator=torch.Generator().manual_seed(7))  # tubelet's draw
    with torch.no_grad():
        want = ref(prompt, negative_prompt=negative, latents=noise, output_type="np", **settings).frames[
            0
        ]  # (T, H, W, 3) in [0, 1]
    assert got.frames.shape == want.shape == (5, 32, 48, 3)
    if with_lora:
        assert got.metadata["loras"][0]["scale"] == 1.0
    # compare the float clip (tubelet's uint8 frames are its rounding)
    diff = np.abs(got.frames.astype(np.float64) / 255.0 - want.astype(np.float64))
    assert diff.max() <= 1.0 / 255.0 + 1e-4, diff.max()
    assert np.abs(got.latents.numpy() - 0).max() > 0

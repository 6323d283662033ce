"""Recipes: the engine finds the shapes recipe through entry points only, and its stage presets
carry their inputs under one path layout."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tubelet import registry
from tubelet.errors import ConfigError, RecipeError

ROOT = Path(__file__).resolve().parents[1]
# the engine's parts (the CLI and the recipes are not the engine)
ENGINE = [
    "tubelet/models",
    "tubelet/diffusion",
    "tubelet/train",
    "tubelet/data",
    "tubelet/eval",
    "tubelet/pipelines",
    "tubelet/kernels",
    "tubelet/convert",
]
SHIPPED = [
    "shapes-vae-frames",
    "shapes-t2v-frames",
    "shapes-t2v-frames-ft",
    "shapes-t2v-frames-big",
    "shapes-t2v-frames-detail",
    "shapes-t2v-frames-gpu",
    "shapes-t2v-boxes",
    "shapes-t2v-boxes-joint",
]


def _python(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_the_engine_does_not_import_or_name_the_recipe() -> None:
    names = re.compile(r"tubelet\.recipes|ShapesTextEncoder|parse_caption|shapes_oracle|data\.shapes")
    for part in ENGINE:
        files = [ROOT / part] if part.endswith(".py") else sorted((ROOT / part).rglob("*.py"))
        assert files, part
        for f in files:
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                assert not names.search(line), f"{f.relative_to(ROOT)}:{n}: {line.strip()}"
    loaded = _python(
        "import sys, tubelet.pipelines, tubelet.train.trainer, tubelet.train.tasks, tubelet.eval.report, "
        "tubelet.eval.suite, tubelet.data.cache, tubelet.models\n"
        "print(sorted(m for m in sys.modules if m.startswith('tubelet.recipes')))"
    )
    assert loaded == "[]"


def test_a_fresh_process_loads_the_default_models_text_encoder_through_the_entry_point() -> None:
    out = _python(
        "from tubelet.models.text import load_text_encoder\n"
        "enc = load_text_encoder('tubelet/assets/shapes-t2v/text_encoder')\n"
        "print(type(enc).__module__, type(enc).__name__)"
    )
    assert out == "tubelet.recipes.shapes.text ShapesTextEncoder"


def test_lookups_and_listings_include_the_recipe() -> None:
    assert registry.load_recipes() == ["shapes"] == registry.load_recipes()  # once, then cached
    assert registry.names("train_preset") == [
        "tiny",
        "wan2.1-1.3b-lora",
        "wan2.1-1.3b-full",
        "tiny-vae",
        *SHIPPED,
    ]
    with pytest.raises(
        ConfigError, match=r"unknown training preset 'nope'; available: \[.*'shapes-t2v-frames'.*'tiny'"
    ):
        registry.lookup("train_preset", "nope")
    with pytest.raises(ConfigError, match=r"unknown dit preset 'nope'; available: .*'shapes-latent-conv'"):
        registry.lookup("dit_preset", "nope")
    assert registry.find("text_encoder_preset", "shapes") is not None
    assert "ShapesTextEncoder" in registry.names("text_encoder_class")
    assert registry.names("eval_dimension")[-1] == "shapes_oracle"
    with pytest.raises(ConfigError, match="unknown registry kind"):
        registry.find("nope", "x")


def test_the_recipes_dit_is_the_default_models() -> None:
    import json

    from tubelet.models.dit import DIT_PRESETS, DiTConfig

    cfg = registry.lookup("dit_preset", "shapes-latent-conv")
    assert DIT_PRESETS["shapes-latent-conv"] is cfg
    shipped = json.loads((ROOT / "tubelet/assets/shapes-t2v/transformer/config.json").read_text())
    assert cfg == DiTConfig(
        dim=256, num_heads=4, num_layers=8, ffn_dim=1024, text_dim=256, in_channels=8, out_channels=8,
        patch_size=(4, 2, 2), embed_init="xavier", pooled_text=True, conv_kernel=3,
    )  # fmt: skip
    for key in ("dim", "num_layers", "in_channels", "conv_kernel", "pooled_text", "embed_init"):
        assert shipped[key] == getattr(cfg, key), key


def test_registering_twice_is_a_no_op_and_a_conflict_is_an_error() -> None:
    from tubelet.train.config import STAGE_INPUTS

    try:
        registry.register("stage_input", "test/registry-path", "make it")
        registry.register("stage_input", "test/registry-path", "make it")
        with pytest.raises(RecipeError, match="already registered"):
            registry.register("stage_input", "test/registry-path", "something else")
        with pytest.raises(RecipeError, match="already registered"):
            registry.register("train_preset", "tiny", registry.lookup("train_preset", "tiny-vae"))
    finally:
        STAGE_INPUTS.pop("test/registry-path", None)


def test_a_broken_recipe_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        name, value = "broken", "nowhere:register"

        def load(self) -> object:
            raise ImportError("no module named nowhere")

    monkeypatch.setattr(registry, "_loaded", None)
    monkeypatch.setattr(registry, "entry_points", lambda group: [Broken()])
    with pytest.raises(RecipeError, match=r"recipe 'broken' \(entry point 'nowhere:register'.*no module"):
        registry.load_recipes()
    assert registry._loaded is None  # tried again (and reported again) by the next lookup


def test_stage_presets_chain_and_name_their_inputs() -> None:
    from tubelet.recipes.shapes.presets import COMMANDS, STAGE_INPUTS
    from tubelet.train.config import resolve_train_config

    cfgs = {name: resolve_train_config(name) for name in SHIPPED}
    assert cfgs["shapes-vae-frames"].data_dir == "data/shapes"
    for prev, name in itertools.pairwise(SHIPPED):
        cfg = cfgs[name]
        assert cfg.out_dir == f"runs/{name}" and cfg.vae_path == "runs/shapes-vae-frames/model"
        if name != "shapes-t2v-frames":
            assert cfg.init_from == f"runs/{prev}/model"
        for path in (cfg.cache, cfg.vae_path, cfg.init_from):
            assert path is None or path in STAGE_INPUTS  # every input has a maker
    assert cfgs["shapes-t2v-frames"].init_from is None
    # the documented recipe makes every input before the stage that reads it
    made: set[str] = set()
    for cmd in COMMANDS:
        m = re.search(r"--preset (\S+)", cmd) if cmd.startswith("tubelet train") else None
        if m:
            cfg = cfgs[m.group(1)]
            needs = [cfg.cache, cfg.vae_path, cfg.init_from] + ([] if cfg.cache else [cfg.data_dir])
            assert all(p in made for p in needs if p), (cmd, needs, made)
            made.add(f"{cfg.out_dir}/model")
        else:
            made.add(re.search(r"--out (\S+)", cmd).group(1))  # type: ignore[union-attr]
    for gone in ("shapes-vae", "shapes-vae-long", "shapes-t2v", "shapes-t2v-latent", "shapes-t2v-fine"):
        assert registry.find("train_preset", gone) is None


def test_run_paths_default_to_the_preset_and_a_missing_input_names_its_maker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tubelet.train.config import resolve_run_paths, resolve_train_config

    monkeypatch.chdir(tmp_path)
    cfg = resolve_train_config("shapes-t2v-frames-ft")
    with pytest.raises(
        ConfigError, match=r"cache: cache/shapes-frames does not exist .*`tubelet data cache data/shapes"
    ):
        resolve_run_paths(cfg)
    for d in ("cache/shapes-frames", "runs/shapes-vae-frames/model"):
        (tmp_path / d).mkdir(parents=True)
    with pytest.raises(
        ConfigError,
        match=r"init_from: runs/shapes-t2v-frames/model does not exist.*`tubelet train --preset shapes-t2v-frames`",
    ):
        resolve_run_paths(cfg)
    (tmp_path / "runs/shapes-t2v-frames/model").mkdir(parents=True)
    assert resolve_run_paths(cfg) == (None, Path("runs/shapes-t2v-frames-ft"))
    assert resolve_run_paths(cfg, run_dir=tmp_path / "elsewhere")[1] == tmp_path / "elsewhere"
    vae = resolve_train_config("shapes-vae-frames")
    with pytest.raises(
        ConfigError, match=r"data_dir: data/shapes does not exist.*tubelet data shapes --out data/shapes"
    ):
        resolve_run_paths(vae)
    assert resolve_run_paths(vae, data_dir=tmp_path)[0] == tmp_path  # --data wins
    with pytest.raises(ConfigError, match="give --out DIR"):
        resolve_run_paths(resolve_train_config("tiny"), data_dir=tmp_path)


def test_shipped_suites_are_found_by_name() -> None:
    from tubelet.recipes.shapes import SUITES, suite_path
    from tubelet.recipes.shapes.oracle import read_suite

    assert suite_path("shapes-heldout") == SUITES / "shapes-heldout.jsonl"
    assert suite_path("shapes-holdout") == SUITES / "shapes-holdout.json"
    assert suite_path("no/such/file.jsonl") == Path("no/such/file.jsonl")
    assert len(read_suite(suite_path("shapes-heldout-reseed"))) == 120

"""Recipes, and the registries through which the engine finds their parts without importing them.

A recipe (a data world with its text encoder, presets, evaluation and prompt suites, e.g.
`tubelet.recipes.shapes`) is a package the engine never imports by name. It announces itself with a
Python entry point in the group `tubelet.recipes`, pointing at a function of no arguments::

    # pyproject.toml
    [project.entry-points."tubelet.recipes"]
    shapes = "tubelet.recipes.shapes:register"

That function adds the recipe's parts with `register` / `register_class`. The engine's tables stay
where they were (e.g. `tubelet.models.dit.DIT_PRESETS`); a recipe's entries are added into them. A
lookup that misses (`find`, `lookup`) and every listing (`names`) first calls `load_recipes()`,
which runs every installed recipe's `register` once per process, so the engine finds a recipe's
parts the first time it needs one and an "unknown ..." error lists them too.

Kinds (`KINDS`; name -> value):

    text_encoder_class   a text-encoder class by its `_class` name (`load_text_encoder`, config mappings)
    text_encoder_preset  a text-encoder config dataclass; its class is the registered one whose
                         `config_class` it is (`tubelet.models.text.TEXT_ENCODER_PRESETS`)
    dit_preset           a `DiTConfig` (`tubelet.models.dit.DIT_PRESETS`)
    vae_preset           a `VAEConfig` (`tubelet.models.vae.VAE_PRESETS`)
    train_preset         a `TrainConfig` (`tubelet.train.config.TRAIN_PRESETS`)
    stage_input          a path a training preset reads -> the command that makes it, for the error
                         when it is missing (`tubelet.train.config.STAGE_INPUTS`)
    eval_dimension       an evaluation `Dimension` class by its `name` (`tubelet.eval.dimensions.DIMENSIONS`)

A recipe is found only when its package is installed (`pip install -e .` registers the entry
points; `make install` does this).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from tubelet.errors import ConfigError, RecipeError

__all__ = [
    "GROUP",
    "KINDS",
    "find",
    "load_recipes",
    "lookup",
    "names",
    "register",
    "register_class",
]

GROUP = "tubelet.recipes"

# kind -> (module, table attribute, how an error names an entry of this kind)
KINDS: dict[str, tuple[str, str, str]] = {
    "text_encoder_class": ("tubelet.models.text", "TEXT_ENCODER_CLASSES", "text encoder class"),
    "text_encoder_preset": ("tubelet.models.text", "TEXT_ENCODER_PRESETS", "text_encoder preset"),
    "dit_preset": ("tubelet.models.dit", "DIT_PRESETS", "dit preset"),
    "vae_preset": ("tubelet.models.vae", "VAE_PRESETS", "vae preset"),
    "train_preset": ("tubelet.train.config", "TRAIN_PRESETS", "training preset"),
    "stage_input": ("tubelet.train.config", "STAGE_INPUTS", "stage input"),
    "eval_dimension": ("tubelet.eval.dimensions", "DIMENSIONS", "dimension"),
}

_loaded: list[str] | None = None  # names of the recipes whose register() ran; None: not yet


def _table(kind: str) -> dict[str, Any]:
    if kind not in KINDS:
        raise ConfigError(f"unknown registry kind {kind!r}; valid: {', '.join(KINDS)}")
    module, attr, _ = KINDS[kind]
    return getattr(importlib.import_module(module), attr)


def register(kind: str, name: str, value: Any) -> None:
    """Add `value` under `name` to the table of `kind`.

    Registering the same name again with an equal value is a no-op (recipes may be loaded twice);
    a different value for a name already taken (by the engine or another recipe) is an error.
    """
    table = _table(kind)
    if name in table and table[name] != value:
        raise RecipeError(f"{KINDS[kind][2]} {name!r} is already registered with a different value")
    table[name] = value


def register_class(kind: str, cls: type) -> None:
    """Register a component class by its class name: `register_class("text_encoder", Enc)` adds
    `Enc` as `text_encoder_class` "Enc" (what a model directory's config.json `_class` names)."""
    register(f"{kind}_class", cls.__name__, cls)


def load_recipes() -> list[str]:
    """Run the `register` function of every installed recipe (entry point group `tubelet.recipes`)
    once per process; later calls return at once. Returns the loaded recipes' names."""
    global _loaded
    if _loaded is not None:
        return list(_loaded)
    _loaded = []  # set first: a recipe's register() may itself look things up
    seen: set[str] = set()
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if ep.name in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(ep.name)
        try:
            ep.load()()
        except Exception as e:
            _loaded = None  # the next lookup tries again and reports the same error
            raise RecipeError(
                f"recipe {ep.name!r} (entry point {ep.value!r} in group {GROUP!r}) failed to register: "
                f"{type(e).__name__}: {e}"
            ) from e
        _loaded.append(ep.name)
    return list(_loaded)


def find(kind: str, name: str) -> Any | None:
    """The entry `name` of `kind`, loading the recipes if the engine's table lacks it; None if no
    installed recipe has it either."""
    table = _table(kind)
    if name not in table:
        load_recipes()
    return table.get(name)


def lookup(kind: str, name: str) -> Any:
    """As `find`, but a miss is a `ConfigError` listing every name available (recipes included)."""
    value = find(kind, name)
    if value is None:
        raise ConfigError(f"unknown {KINDS[kind][2]} {name!r}; available: {sorted(names(kind))}")
    return value


def names(kind: str) -> list[str]:
    """Every name of `kind`, the installed recipes' included, in registration order."""
    load_recipes()
    return list(_table(kind))

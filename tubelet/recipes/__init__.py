"""Recipes: worlds, models and training recipes built on the engine like any user's code.

Each recipe is a package that registers its parts (text encoders, presets, evaluation dimensions)
through an entry point in the group `tubelet.recipes` (see `tubelet.registry`); the engine never
imports a recipe by name. `tubelet.recipes.shapes` is the synthetic shapes world and the recipe of
the embedded default model.
"""

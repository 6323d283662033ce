"""Error types users can cause. The CLI prints these as one line and exits non-zero."""

from __future__ import annotations


class TubeletError(Exception):
    """Base class for errors caused by user input (files, flags, prompts, configs)."""


class ConfigError(TubeletError, ValueError):
    """A config file or dict does not match its dataclass (unknown key, wrong type)."""


class VideoError(TubeletError):
    """A video or image file cannot be read or written. Names the file and the cause."""

    def __init__(self, path: object, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class CaptionError(TubeletError, ValueError):
    """A prompt/caption cannot be parsed by a recipe's caption grammar."""


class DeviceError(TubeletError, ValueError):
    """A requested device is not a torch device or is not present on this machine."""


class ModelLoadError(TubeletError):
    """A model directory is missing, incomplete, or does not match its config."""


class ConversionError(TubeletError):
    """A checkpoint cannot be converted (wrong layout, missing or mis-shaped tensor)."""


class DataError(TubeletError):
    """A dataset directory or sample is unusable."""


class RecipeError(TubeletError):
    """An installed recipe (entry point group `tubelet.recipes`) cannot register its parts."""


class TrainingError(TubeletError):
    """The run cannot go on (e.g. repeated NaN losses, a bucket that will not fit); the last good
    checkpoint is intact."""


def check_choice(
    name: str, value: object, allowed: tuple[str, ...], error: type[TubeletError] = TubeletError
) -> None:
    """Raise `error` "NAME must be one of A, B, got VALUE" unless `value` is one of `allowed`."""
    if value not in allowed:
        raise error(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

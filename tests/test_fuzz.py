"""Property-based fuzzing of the front door: CLI arguments, generation requests, config files, `--set`
overrides and captions files. Whatever the input, the only outcomes are success or the project's
typed error (`TubeletError`) with a message; never another exception, a hang or a traceback.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tubelet.errors import TubeletError

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure here is reproducible
)

# Text with everything a user or a file can hold: control characters, NULs, CJK, emoji, and lone
# surrogates (what Python makes of undecodable bytes in argv).
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e309", "-0", "0x10", "nan", "inf", "1_000", " 3", "", "٣"]),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def _typed_error_only(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except TubeletError as e:
        assert str(e).strip(), "an error without a message"
        return None


# --------------------------------------------------------------------------------------------- the CLI


class _Accepted(SystemExit):
    """Raised instead of loading a model: the arguments passed every check that needs no model."""


GENERATE_OPTIONS = ["--frames", "--height", "--width", "--steps", "--guidance", "--seed", "--sampler",
                    "--strength", "--context", "--negative", "--device", "--out", "--image", "--extend"]  # fmt: skip


@FUZZ
@given(
    prompt=TEXT,
    options=st.lists(
        st.tuples(st.sampled_from(GENERATE_OPTIONS), st.one_of(TEXT, NUMBERS.map(str))), max_size=4
    ),
    flags=st.lists(st.sampled_from(["--loop", "--backward", "--no-progress"]), max_size=2),
)
def test_fuzz_generate_arguments(
    prompt: str,
    options: list[tuple[str, str]],
    flags: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tubelet.pipelines
    from tubelet.cli import main

    def accept(*_: object, **__: object) -> None:
        raise _Accepted(55)

    monkeypatch.setattr(tubelet.pipelines, "load_pipeline", accept)
    monkeypatch.delenv("TUBELET_DEBUG", raising=False)
    argv = ["generate", "--", prompt] if prompt.startswith("-") else ["generate", prompt]
    argv = argv[:1] + [a for o in options for a in o] + flags + argv[1:]
    if not any(o == "--out" for o, _ in options):
        argv += ["--out", str(Path(tempfile.gettempdir()) / "tubelet-fuzz" / "clip.mp4")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    code = exit_info.value.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    assert code in (55, 1, 2), (code, err)
    if code == 1:
        assert err.strip().splitlines()[-1].startswith("error: ")
    if code == 2:  # a usage error from the argument parser (wrong type, missing value)
        assert "Usage:" in err or "Error" in err
    assert not (Path(tempfile.gettempdir()) / "tubelet-fuzz").exists()


# ------------------------------------------------------------------------------------ requests, configs

REQUEST_KEYS = ["prompt", "task", "negative_prompt", "num_frames", "height", "width", "num_inference_steps",
                "guidance_scale", "sampler", "seed", "image", "last_image", "video", "video_b", "backward",
                "context_latents", "strength"]  # fmt: skip


@FUZZ
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(REQUEST_KEYS), TEXT),
        st.one_of(JSON, NUMBERS, st.sampled_from(["t2v", "i2v", "edit", "unipc", "/", "\x00", "."])),
        max_size=8,
    )
)
def test_fuzz_generation_request(data: dict[str, Any]) -> None:
    from tubelet.pipelines import GenerationRequest

    def build() -> None:
        GenerationRequest.from_dict(data).validate()

    _typed_error_only(build)


@pytest.mark.parametrize("field", ["image", "last_image", "video"])
def test_request_paths_with_nul_or_surrogates_are_request_errors(field: str) -> None:
    from tubelet.pipelines import GenerationRequest, RequestError

    task = {"image": "i2v", "last_image": "i2v", "video": "extend"}[field]
    for bad in ("a\x00b.png", "a\udcffb.png"):
        with pytest.raises(RequestError, match=field):
            GenerationRequest.from_dict({"prompt": "x", "task": task, field: bad}).validate()


@FUZZ
@given(st.binary(max_size=300) | TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzz_config_files(raw: bytes) -> None:
    from tubelet.config import load_config_file
    from tubelet.train.config import resolve_train_config

    with tempfile.TemporaryDirectory() as d:
        for name in ("c.yaml", "c.json"):
            path = Path(d) / name
            path.write_bytes(raw)
            _typed_error_only(load_config_file, path)
            _typed_error_only(resolve_train_config, None, path)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "max_steps",
                "seed",
                "optim",
                "data",
                "dit",
                "flow",
                "ema_decay",
                "precision",
                "samples",
                "grad_accum",
                "save_every",
                "vae",
                "text_encoder",
            ]
        ),
        JSON,
        max_size=4,
    )
)
def test_fuzz_train_config_mappings(data: dict[str, Any]) -> None:
    from tubelet.config import config_from_dict
    from tubelet.train.config import TrainConfig

    cfg = _typed_error_only(config_from_dict, TrainConfig, data)
    if cfg is not None:
        assert math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "optim.lr",
                    "optim.betas",
                    "max_steps",
                    "seed",
                    "data.buckets",
                    "ema_decay",
                    "optim.grad_clip",
                    "flow.shift",
                    "data.fps",
                    "nope",
                    "optim",
                    "",
                ]
            ),
            st.one_of(TEXT, NUMBERS.map(str), JSON.map(json.dumps)),
        ).map(lambda kv: f"{kv[0]}={kv[1]}"),
        max_size=3,
    )
)
def test_fuzz_set_overrides(values: list[str]) -> None:
    from tubelet.cli.train import _parse_set
    from tubelet.train.config import resolve_train_config

    def resolve() -> None:
        resolve_train_config("tiny", overrides=_parse_set(values))

    _typed_error_only(resolve)


# ---------------------------------------------------------------------------------------- captions


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.fixed_dictionaries({"video": st.one_of(TEXT, JSON), "caption": st.one_of(TEXT, JSON)}).map(
                json.dumps
            ),
            JSON.map(json.dumps),
            TEXT,
        ),
        max_size=5,
    ),
    csv=st.booleans(),
)
def test_fuzz_captions_files(lines: list[str], csv: bool) -> None:
    from tubelet.data.dataset import read_captions

    with tempfile.TemporaryDirectory() as d:
        name = "captions.csv" if csv else "captions.jsonl"
        text = ("video,caption\n" if csv else "") + "\n".join(lines)
        (Path(d) / name).write_bytes(text.encode("utf-8", "surrogatepass"))
        caps = _typed_error_only(read_captions, d)
        if caps is not None:
            for e in caps.entries:  # every accepted caption can be written back as UTF-8
                e.caption.encode("utf-8")
                e.video.encode("utf-8")

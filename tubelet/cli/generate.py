"""`tubelet generate PROMPT`: text-to-video and the conditioning tasks, one clip to an mp4."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Tuple  # noqa: UP035 - typer needs these on py3.10

import typer

from tubelet.cli.apps import app


def slugify(text: str, max_len: int = 60) -> str:
    """A file-name-safe slug of a prompt: lower case, runs of non-word characters -> "-" (CJK kept)."""
    s = re.sub(r"[^\w]+", "-", text.lower()).strip("-_")
    return s[:max_len].rstrip("-_") or "video"


def check_output(path: Path) -> None:
    """Fail before generating when the output cannot be written (extension, folder, name, permission)."""
    from tubelet.errors import VideoError
    from tubelet.media import WRITE_EXTENSIONS

    if path.suffix.lower() not in WRITE_EXTENSIONS:
        raise VideoError(path, f"unsupported output extension; expected one of {', '.join(WRITE_EXTENSIONS)}")
    from tubelet.core.files import check_output_location

    check_output_location(path, kind="file", what="output video")


@app.command("generate")
def generate(
    prompt: str = typer.Argument(..., help="What the video shows."),
    model: Optional[Path] = typer.Option(  # noqa: UP045 - typer needs Optional on py3.10
        None, "--model", "-m", help="Pipeline directory or training run (default: the embedded model)."
    ),
    frames: Optional[int] = typer.Option(  # noqa: UP045
        None, "--frames", help="Frame count (default: the model's; the model names the counts it can make)."
    ),
    height: Optional[int] = typer.Option(None, "--height", help="Height in pixels (default: the model's)."),  # noqa: UP045
    width: Optional[int] = typer.Option(None, "--width", help="Width in pixels (default: the model's)."),  # noqa: UP045
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the model's)."),  # noqa: UP045
    guidance: Optional[float] = typer.Option(  # noqa: UP045
        None, "--guidance", help="Classifier-free guidance scale (default: the model's; 1 = off)."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default: a random one)."),  # noqa: UP045
    negative: Optional[str] = typer.Option(None, "--negative", help="Negative prompt."),  # noqa: UP045
    sampler: Optional[str] = typer.Option(  # noqa: UP045
        None, "--sampler", help="unipc, dpmpp_2m or euler (default: the model's)."
    ),
    cache: Optional[float] = typer.Option(  # noqa: UP045
        None,
        "--cache",
        help="Step cache threshold, e.g. 0.15: skip most of the DiT on steps whose first block changes "
        "less than this since the last full step (faster, slightly different; docs/inference.md).",
    ),
    vae_tile: int = typer.Option(
        0,
        "--vae-tile",
        min=0,
        help="Decode in tiles of N latent pixels (bounded memory at high resolution; 0: off).",
    ),
    offload: Optional[str] = typer.Option(  # noqa: UP045
        None,
        "--offload",
        help="Keep the weights in CPU memory and run on the device: 'model' (one component on the "
        "device at a time) or 'blocks' (the DiT's blocks stream in one by one; least memory). Exact.",
    ),
    quantize: Optional[str] = typer.Option(  # noqa: UP045
        None,
        "--quantize",
        help="Quantize the DiT's weights: int8 (weight-only) or fp8 (fp8 matmuls on GPUs that have them). "
        "Less memory, slightly different output (docs/inference.md).",
    ),
    compile_: bool = typer.Option(
        False, "--compile", help="torch.compile the DiT blocks (the first clip pays the compilation)."
    ),
    dtype: str = typer.Option(
        "auto",
        "--dtype",
        help="The DiT's compute (and weight) dtype: auto (bfloat16 on a GPU that has it, else float32), "
        "float32, bfloat16 (1.9x faster than float32 on CPUs at Wan width), float16.",
    ),
    parallel: Optional[str] = typer.Option(  # noqa: UP045
        None,
        "--parallel",
        help="Under torchrun: split each DiT call over the processes, 'sequence' (Ulysses, the default "
        "there) or 'cfg' (one guidance branch per process; 2 processes).",
    ),
    out: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--out", "-o", help="Output .mp4/.gif (default: outputs/<prompt-slug>-<seed>.mp4)."
    ),
    image: Optional[Path] = typer.Option(None, "--image", help="Image-to-video: the first frame."),  # noqa: UP045
    last_image: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--last-image", help="The last frame (with --image: first + last; alone: end on it)."
    ),
    extend: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--extend", help="Continue this clip (its tail becomes the start of the output)."
    ),
    backward: bool = typer.Option(False, "--backward", help="With --extend: generate what came before."),
    loop: bool = typer.Option(False, "--loop", help="A seamless loop: the last frame leads into the first."),
    connect: Optional[Tuple[Path, Path]] = typer.Option(  # noqa: UP006,UP045
        None, "--connect", metavar="A B", help="A transition from the end of clip A to the start of clip B."
    ),
    edit: Optional[Path] = typer.Option(None, "--edit", help="Edit this clip (SDEdit) to match the prompt."),  # noqa: UP045
    strength: Optional[float] = typer.Option(  # noqa: UP045
        None, "--strength", help="With --edit: 0 keeps the clip, 1 ignores it (default 0.6)."
    ),
    context: Optional[int] = typer.Option(  # noqa: UP045
        None,
        "--context",
        help="With --extend/--connect: latent frames taken from the input (1 latent = 4 frames).",
    ),
    boxes: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--boxes", help="Box tracks (JSON file, docs/box-control.md): where each object goes."
    ),
    box: list[str] = typer.Option(
        [], "--box", help='One box track inline, repeatable: "OBJECT[ soft]: FRAME:x0,y0,x1,y1 ..."'
    ),
    box_guidance: Optional[str] = typer.Option(  # noqa: UP045
        None,
        "--box-guidance",
        help="With boxes: joint (guidance pushes towards the text and the boxes: the default) or text "
        "(both guidance branches follow the boxes).",
    ),
    draw_boxes: bool = typer.Option(
        False, "--draw-boxes", help="Also write OUT.boxes.mp4: the clip with the box tracks drawn on it."
    ),
    lora: list[str] = typer.Option(
        [],
        "--lora",
        help="A LoRA file or directory, optionally :SCALE (default 1), repeatable: --lora style.safetensors:0.8",
    ),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:1, ..."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Generate one video from PROMPT and print its path (settings go in a sidecar .json).

    One task at a time: text-to-video, --image, --extend, --loop, --connect or --edit.

    Inputs of another size or frame rate are resized / resampled, with a note (also in the metadata).
    """
    import torch

    from tubelet.errors import TubeletError, check_choice

    tasks = [
        name
        for name, on in (
            ("--image/--last-image", image is not None or last_image is not None),
            ("--extend", extend is not None),
            ("--loop", loop),
            ("--connect", connect is not None),
            ("--edit", edit is not None),
        )
        if on
    ]
    if len(tasks) > 1:
        raise TubeletError(f"{' and '.join(tasks)} cannot be combined: choose one task")
    if backward and extend is None:
        raise TubeletError("--backward only applies to --extend")
    if strength is not None and edit is None:
        raise TubeletError("--strength only applies to --edit")
    if context is not None and extend is None and connect is None:
        raise TubeletError("--context only applies to --extend and --connect")
    from tubelet.pipelines import GenerationRequest, load_pipeline

    task, video, video_b = "t2v", None, None
    if image is not None or last_image is not None:
        task = "i2v"
    elif extend is not None:
        task, video = "extend", extend
    elif loop:
        task = "loop"
    elif connect is not None:
        task, video, video_b = "connect", connect[0], connect[1]
    elif edit is not None:
        task, video = "edit", edit
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if parallel is not None:
        from tubelet.train.sequence_parallel import PARALLEL_MODES

        check_choice("--parallel", parallel, PARALLEL_MODES)
        if world < 2:
            raise TubeletError(
                "--parallel needs several processes: torchrun --nproc_per_node N -m tubelet generate ..."
            )
    if world > 1 and cache is not None:
        raise TubeletError("--cache does not combine with parallel generation yet")
    if world > 1 and offload is not None:
        raise TubeletError(
            "--offload does not combine with parallel generation (each process holds its share)"
        )
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    box_json = _read_boxes(boxes, box)
    if box_guidance is not None and box_guidance not in ("joint", "text"):
        raise TubeletError(f"--box-guidance must be joint or text, got {box_guidance!r}")
    if draw_boxes and box_json is None:
        raise TubeletError("--draw-boxes needs --boxes or --box")
    request = GenerationRequest(
        prompt=prompt,
        task=task,
        negative_prompt=negative,
        num_frames=frames,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        sampler=sampler,
        seed=seed,
        image=str(image) if image is not None else None,
        last_image=str(last_image) if last_image is not None else None,
        video=str(video) if video is not None else None,
        video_b=str(video_b) if video_b is not None else None,
        backward=backward,
        context_latents=context,
        strength=strength,
        boxes=box_json,
        cache=cache,
    )
    request.validate()  # everything that needs no model (input files included), before loading one
    if vae_tile:
        from tubelet.models.vae_tiling import VAETiling

        VAETiling(vae_tile, min(8, vae_tile // 2))  # a bad size is an error before the model loads
    if offload is not None:
        from tubelet.pipelines.offload import OFFLOAD_MODES

        check_choice("--offload", offload, OFFLOAD_MODES)
    if quantize is not None:
        from tubelet.kernels.quant import QUANT_MODES, _torchao

        check_choice("--quantize", quantize, QUANT_MODES)
        _torchao()  # installed? (before the model loads)
    from tubelet.devices import resolve_dtype

    resolve_dtype(dtype, "cpu")  # a bad name is an error now, before the model loads
    if compile_ and offload == "blocks":
        raise TubeletError("--compile does not combine with --offload blocks (use --offload model)")
    loras = [parse_lora_arg(v) for v in lora]
    path = out if out is not None else Path("outputs") / f"{slugify(prompt)}-{seed}.mp4"
    check_output(path)

    if world > 1:
        return _generate_parallel(
            request,
            model,
            device,
            parallel or "sequence",
            path,
            loras,
            quantize,
            compile_,
            vae_tile,
            progress,
            dtype,
        )
    pipe = load_pipeline(model, device=device, offload=offload, dtype=resolve_dtype(dtype, device))
    if offload is not None and pipe.device.type == "cpu":
        typer.echo(
            "note: --offload on the CPU: nothing to offload to (the weights are in CPU memory already)",
            err=True,
        )
    if vae_tile:
        pipe.enable_vae_tiling(vae_tile, min(8, vae_tile // 2))
    for file, scale in loras:
        pipe.load_lora(file, scale)
    if quantize is not None:
        pipe.quantize(quantize)
    if compile_:
        pipe.enable_compile()
    if box_guidance is not None:
        import dataclasses

        pipe.config = dataclasses.replace(pipe.config, box_guidance=box_guidance)
    result = pipe.generate(
        request, progress=progress, on_note=lambda message: typer.echo(f"note: {message}", err=True)
    )
    written = result.save(path)
    if draw_boxes:
        from tubelet.boxes import draw_boxes as draw
        from tubelet.boxes import parse_boxes
        from tubelet.media import write_video

        preview = Path(written).with_name(Path(written).stem + ".boxes" + Path(written).suffix)
        drawn = draw(result.frames, parse_boxes(result.metadata.get("boxes", box_json)))
        write_video(preview, drawn, result.fps, metadata=result.metadata)
        typer.echo(f"boxes drawn: {preview.resolve()}", err=True)
    typer.echo(str(Path(written).resolve()))


def _generate_parallel(
    request: Any,
    model: Path | None,
    device: str,
    mode: str,
    path: Path,
    loras: list[tuple[Path, float]],
    quantize: str | None,
    compile_: bool,
    vae_tile: int,
    progress: bool,
    dtype: str,
) -> None:
    """One clip made by torchrun's processes together (`TextToVideoPipeline.enable_parallel`): every
    process runs the same request with rank 0's seed; rank 0 writes the clip and prints its path."""
    import dataclasses

    import torch
    import torch.distributed as dist

    from tubelet.devices import resolve_dtype
    from tubelet.pipelines import load_pipeline
    from tubelet.train.parallel import init_distributed, shutdown_distributed

    info = init_distributed(device)
    ok = False
    try:
        seed = torch.tensor([int(request.seed)], dtype=torch.long)
        dist.broadcast(seed, 0)  # a seed drawn by each process would differ: rank 0's is used
        request = dataclasses.replace(request, seed=int(seed.item()))
        pipe = load_pipeline(model, device=info.device, dtype=resolve_dtype(dtype, str(info.device)))
        if vae_tile:
            pipe.enable_vae_tiling(vae_tile, min(8, vae_tile // 2))
        for file, scale in loras:
            pipe.load_lora(file, scale)
        if quantize is not None:
            pipe.quantize(quantize)
        if compile_:
            pipe.enable_compile()
        pipe.enable_parallel(mode)
        result = pipe.generate(
            request,
            progress=progress and info.is_main,
            on_note=(lambda message: typer.echo(f"note: {message}", err=True)) if info.is_main else None,
        )
        if info.is_main:
            written = result.save(path)
            typer.echo(str(Path(written).resolve()))
        ok = True
    finally:
        shutdown_distributed(wait=ok)


def parse_lora_arg(value: str) -> tuple[Path, float]:
    """``FILE[:SCALE]`` -> (path, scale); the file must exist (a colon inside a path is kept)."""
    import math

    from tubelet.models.lora import LoRAError, lora_path

    file, scale = value, 1.0
    head, sep, tail = value.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
            file = head
        except ValueError:
            pass  # no scale: the colon belongs to the path
    if not math.isfinite(scale):
        raise LoRAError(f"--lora {value}: the scale must be a finite number")
    p = Path(file)
    if not p.exists():
        raise LoRAError(f"--lora {value}: {p} not found")
    lora_path(p)  # a directory must hold one LoRA file
    return p, scale


def _read_boxes(file: Path | None, inline: list[str]) -> dict[str, object] | None:
    """The box tracks of --boxes FILE and/or --box values, as their JSON form (None: no boxes)."""
    from tubelet.boxes import BoxError, parse_inline_box

    tracks: list[object] = []
    if file is not None:
        from tubelet.core.parsing import read_json

        data = read_json(file, error=BoxError, what="boxes file")
        if isinstance(data, dict) and isinstance(data.get("tracks"), list):
            tracks.extend(data["tracks"])
        elif isinstance(data, list):
            tracks.extend(data)
        else:
            raise BoxError(f'{file}: expected {{"tracks": [...]}} or a list of tracks')
    tracks.extend(parse_inline_box(text, i) for i, text in enumerate(inline))
    return {"tracks": tracks} if tracks else None

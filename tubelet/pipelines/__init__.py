"""Generation: requests, loading and the text-to-video pipeline with its conditioning tasks.

    from tubelet.pipelines import GenerationRequest, load_pipeline
    pipe = load_pipeline()                                       # the embedded default model
    out = pipe.generate(GenerationRequest("a red circle moving right", seed=0))
    out.save("clip.mp4")

Modules: `request` (GenerationRequest), `loading` (load_pipeline, model directories), `inputs`
(images and clips fitted to the output), `text_to_video` (TextToVideoPipeline, PipelineConfig,
VideoResult).
"""

from __future__ import annotations

from tubelet.pipelines.inputs import Notes, resample_frames
from tubelet.pipelines.loading import default_model_dir, load_pipeline, resolve_model_dir
from tubelet.pipelines.request import GenerationRequest, RequestError
from tubelet.pipelines.text_to_video import PipelineConfig, TextToVideoPipeline, VideoResult

__all__ = [
    "GenerationRequest",
    "Notes",
    "PipelineConfig",
    "RequestError",
    "TextToVideoPipeline",
    "VideoResult",
    "default_model_dir",
    "load_pipeline",
    "resample_frames",
    "resolve_model_dir",
]

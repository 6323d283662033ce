"""Video and image files: probe, decode (with timestamp-exact resampling), encode, metadata.

Everything goes through PyAV (FFmpeg linked in-process, no subprocess). Every failure a
user can cause (missing/broken/odd files, bad arguments) raises `tubelet.errors.VideoError`
naming the file and one cause; raw FFmpeg errors never escape.

Conventions:
- frames are `uint8` arrays shaped (T, H, W, 3), RGB, C-contiguous;
- times are seconds from the start of the video stream (its first timestamp is 0);
- a frame is "on screen" from its presentation timestamp until the next frame's;
- display rotation stored in the container (phone videos) is applied when decoding, and
  `probe_video` reports the rotated (displayed) size, so both agree.

Modules, one responsibility each:
    formats   extension lists (`is_video_path`, `WRITE_EXTENSIONS`, ...) and size / rate limits
    probe     `probe_video`: container facts without decoding
    read      `read_video`, `Video`: decoding, resampling by timestamps (`read.MAX_DECODE_BYTES` caps it)
    write     `write_video`: mp4 / mov / mkv / webm / gif, atomic
    image     `read_image`, `probe_image`
    metadata  `read_metadata`, `sidecar_path`: generation metadata in the container and the sidecar
    frames    `frames_to_unit`, `unit_to_frames`: uint8 pixels <-> [-1, 1]

Heavy libraries (av, cv2, PIL, torch) are imported inside functions so importing this package is cheap.
"""

from __future__ import annotations

from tubelet.media.formats import (
    IMAGE_EXTENSIONS,
    MAX_FPS,
    MAX_SIDE,
    VIDEO_EXTENSIONS,
    WRITE_EXTENSIONS,
    is_image_path,
    is_video_path,
)
from tubelet.media.frames import frames_to_unit, unit_to_frames
from tubelet.media.image import probe_image, read_image
from tubelet.media.metadata import read_metadata, sidecar_path
from tubelet.media.probe import VideoInfo, probe_video
from tubelet.media.read import MAX_DECODE_BYTES, Video, read_video
from tubelet.media.write import write_video

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_DECODE_BYTES",
    "MAX_FPS",
    "MAX_SIDE",
    "VIDEO_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "Video",
    "VideoInfo",
    "frames_to_unit",
    "is_image_path",
    "is_video_path",
    "probe_image",
    "probe_video",
    "read_image",
    "read_metadata",
    "read_video",
    "sidecar_path",
    "unit_to_frames",
    "write_video",
]

"""Still images: `read_image` (decode to uint8 RGB) and `probe_image` (displayed size from the header)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tubelet.errors import VideoError
from tubelet.media._common import _check_input_file, _short, _sniff
from tubelet.media.formats import MAX_SIDE

__all__ = ["probe_image", "read_image"]


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any PIL-readable image as uint8 (H, W, 3) RGB.

    EXIF orientation is applied; transparency is composited over white; 16-bit images are
    scaled to 8 bits; multi-frame files (animated webp/png, tiff pages) give their first frame.

    Raises:
        VideoError: missing/empty/directory path, not an image, truncated/corrupt data, or more than
            MAX_SIDE*MAX_SIDE pixels.
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    _check_input_file(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w <= 0 or h <= 0 or w * h > MAX_SIDE * MAX_SIDE:
                    raise VideoError(
                        p, f"image size {w}x{h} is outside the supported 1..{MAX_SIDE**2} pixels"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                return _pil_to_rgb(img)
    except VideoError:
        raise
    except Image.DecompressionBombError as e:
        raise VideoError(p, f"image too large ({_short(e)})") from None
    except UnidentifiedImageError:
        kind = _sniff(p)
        what = "the file contains plain text" if kind == "text" else "unrecognised image format"
        raise VideoError(p, f"not an image: {what}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise VideoError(p, f"corrupt or truncated image ({_short(e)})") from None


def _pil_to_rgb(img: Any) -> np.ndarray:
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img).astype(np.float64)
        if mode == "I" and a.max(initial=0) <= 255:
            g = a
        else:
            g = a / 257.0
        g = np.clip(np.rint(g), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info)
    if has_alpha or (mode in ("L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def probe_image(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of an image as displayed (EXIF orientation applied), read from its header only.

    Raises:
        VideoError: missing/empty/directory path, or a file PIL cannot open.
    """
    from PIL import Image

    p = Path(path)
    _check_input_file(p)
    try:
        with Image.open(p) as im:
            width, height = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation: shown rotated 90 degrees
                width, height = height, width
    except Exception as e:
        raise VideoError(p, f"not a readable image ({type(e).__name__}: {e})") from None
    return int(width), int(height)

"""One image file -> the array a prepared dataset stores: the single conversion shared by the
preparers (``data_prep.folder``, ``data_prep.omniglot``) and by the reader of new images
(``data_prep.episodes``), so that images met at evaluation time go through exactly what the
training images went through.

A dataset records its conversion in ``meta.json`` as ::

    "preprocess": {"size": 28, "channels": 1, "invert": true, "resample": "lanczos"}

and ``Preprocess.from_meta`` reads it back. ``read_image(file, preprocess)`` applies, in order:

1. decode with Pillow (the first frame of a multi-frame file). An image larger than Pillow's
   decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 megapixels) is refused:
   Pillow only warns between 1× and 2× the limit, here that warning is an error too;
2. turn upright by the EXIF orientation tag (cameras store the sensor's pixels plus this tag);
3. 16-bit (and 32-bit integer) grayscale is scaled from 0..65535 to 0..255 (Pillow's own
   conversion would clip every value above 255 to white);
4. transparency is composited onto white (dropping the alpha channel would show whatever colour
   the transparent pixels happen to hold, usually black);
5. convert to ``"L"`` (channels 1; Pillow's ITU-R 601-2 luma, L = 0.299 R + 0.587 G + 0.114 B) or
   ``"RGB"`` (channels 3); palette, 1-bit, CMYK and other modes go through Pillow's converters;
6. resize to size × size with the recorded filter (LANCZOS, antialiased). This is a plain
   resize: the aspect ratio is not kept (no crop, no padding), as in the usual mini-ImageNet
   pipeline; a non-square image is stretched;
7. if ``invert``: 255 − x, for dark-on-light drawings (Omniglot) so that strokes are bright.

The result is uint8 [size, size, channels] (height, width, channels), the prepared format's layout.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from anil.data import DatasetError

# The file extensions torchvision's ImageFolder accepts (its IMG_EXTENSIONS), compared in lower
# case; listed here so that nothing needs torchvision.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Names stored in meta.json -> Pillow filters. One entry today; a new one needs no other change.
RESAMPLE = {"lanczos": Image.Resampling.LANCZOS}

# Modes whose pixel values span 0..65535 (or more) rather than 0..255.
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# Why read_image refused a file; a report groups the refused files by these.
UNREADABLE = "not a readable image"
BOMB = "too large (decompression-bomb limit)"


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class ImageReadError(ValueError):
    """A file could not be turned into an image. ``reason`` is one of UNREADABLE or BOMB (for
    grouping in a report); ``detail`` is Pillow's own message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Preprocess:
    """The conversion of one image (see the module docstring for the steps)."""

    size: int  # output height = width, in pixels
    channels: int  # 1: grayscale ("L"), 3: colour ("RGB")
    invert: bool = False  # 255 - x after resizing (dark-on-light drawings -> bright strokes)
    resample: str = "lanczos"  # a key of RESAMPLE

    def __post_init__(self):
        if not (isinstance(self.size, int) and not isinstance(self.size, bool) and self.size >= 1):
            raise ValueError(f"size must be a positive integer, got {self.size!r}")
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if not isinstance(self.invert, bool):
            raise ValueError(f"invert must be true or false, got {self.invert!r}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}")

    def to_meta(self) -> dict:
        """The ``"preprocess"`` entry of meta.json."""
        return {"size": self.size, "channels": self.channels, "invert": self.invert,
                "resample": self.resample}

    @classmethod
    def from_meta(cls, value, where: str) -> "Preprocess":
        """Read back a ``"preprocess"`` entry; ``where`` names its meta.json in the error."""
        try:
            if not isinstance(value, dict) or set(value) != {"size", "channels", "invert", "resample"}:
                raise ValueError("expected the keys size, channels, invert, resample")
            return cls(value["size"], value["channels"], value["invert"], value["resample"])
        except ValueError as e:
            raise DatasetError(f"{where}: its \"preprocess\" entry {value!r} is malformed ({e}); "
                               f"prepare the dataset again") from None


def convert(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """A decoded Pillow image -> uint8 [size, size, channels] (steps 2-7 of the module docstring)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_GRAY_MODES:
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("L" if preprocess.channels == 1 else "RGB")
    image = image.resize((preprocess.size, preprocess.size), RESAMPLE[preprocess.resample])
    array = np.asarray(image, dtype=np.uint8).reshape(preprocess.size, preprocess.size, preprocess.channels)
    return 255 - array if preprocess.invert else array


def read_image(source: str | Path | bytes, preprocess: Preprocess) -> np.ndarray:
    """Decode a file (a path, or its bytes) and ``convert`` it: uint8 [size, size, channels].

    Raises ImageReadError (never anything else for a bad file) when the file is not an image
    Pillow can decode, is truncated or corrupt, or exceeds the decompression-bomb limit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                return convert(image, preprocess)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageReadError(BOMB, str(e)) from None
        except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, ...)
            raise ImageReadError(UNREADABLE, f"{type(e).__name__}: {e}") from None

"""Image reading that accepts what microscopes write and always returns RGB uint8."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dorl.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MIN_SIDE = 16
MAX_PIXELS = 64_000_000


class ImageReadError(InputError, OSError):
    """An image file is missing, corrupt, or not usable as a cell image."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


#: The bit depths cameras store in 16-bit words; data is scaled by the smallest that holds it.
BIT_DEPTHS = (8, 10, 12, 14, 16)


def bit_depth(arr: np.ndarray, declared_max: int | None = None) -> int:
    """The bit depth an integer image was recorded at.

    ``declared_max`` (a TIFF's MaxSampleValue tag) wins when a file gives it. Otherwise the
    smallest of :data:`BIT_DEPTHS` that holds the brightest value: a camera's 12-bit data in a
    16-bit file (values up to 4095) is 12-bit. A bright-field image's background is its
    brightest part, near the top of its range, so its maximum shows the depth it was recorded
    at; a 16-bit recording darker than 1/16 of its range is read as 12-bit (brightened).
    """
    top = int(declared_max) if declared_max else int(arr.max(initial=0))
    return next((bits for bits in BIT_DEPTHS if top < 2 ** bits), BIT_DEPTHS[-1])


def _to_uint8(arr: np.ndarray, declared_max: int | None = None) -> np.ndarray:
    """Scale an integer or float array to uint8 (integers by their :func:`bit_depth`, floats by
    0..1 or 0..255)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = 2 ** bit_depth(arr, declared_max) - 1
        return np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    arr = np.nan_to_num(arr.astype(np.float64))
    top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
    return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _to_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """Return HxWx3: grey is repeated, alpha is composited on white, extra channels refused."""
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha
        arr = np.concatenate([np.repeat(arr[:, :, :1], 3, axis=2), arr[:, :, 1:]], axis=2)
    if arr.ndim == 3 and arr.shape[2] == 4:
        alpha = arr[:, :, 3:].astype(np.float32) / 255.0
        rgb = arr[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr
    raise ImageReadError(path, f"unsupported image shape {arr.shape}; expected grey, RGB or RGBA")


def _refuse_too_large(path: Path, width: int, height: int) -> None:
    """Refuse an image whose header declares more than :data:`MAX_PIXELS`, before a pixel is
    decoded: a small file may declare a huge image."""
    if width * height > MAX_PIXELS:
        raise ImageReadError(path, f"image is {width}x{height}, larger than {MAX_PIXELS:,} "
                                   f"pixels; cut it into smaller fields or single cells first")


def _read_tiff(path: Path) -> tuple[np.ndarray, int | None]:
    """The first page's pixels and the file's declared MaxSampleValue (None without one)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _refuse_too_large(path, page.imagewidth, page.imagelength)
        arr = page.asarray()
        tag = page.tags.get("MaxSampleValue")
        declared = int(np.max(tag.value)) if tag is not None else None
    # Multi-page or channel-first stacks: take the first plane, channels last.
    while arr.ndim > 3:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return arr, declared


def _read_pil(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            _refuse_too_large(path, img.width, img.height)
            img = ImageOps.exif_transpose(img)
            if img.mode == "P":
                img = img.convert("RGBA")
            elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            elif img.mode == "LA":
                img = img.convert("RGBA")
            return np.asarray(img)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an RGB uint8 array of shape (H, W, 3).

    Accepts jpg, png, bmp and tiff; 8- to 16-bit, scaled by the depth the data was recorded at
    (:func:`bit_depth`); grey, RGB or RGBA (composited on white); EXIF orientation is applied.

    Raises
    ------
    ImageReadError
        Naming the file and the problem: missing, unreadable/corrupt, too small or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    declared = None
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr, declared = _read_tiff(path)
        else:
            arr = _read_pil(path)
    except ImageReadError:
        raise
    except Exception as exc:  # PIL/tifffile raise many types for corrupt data
        raise ImageReadError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim < 2 or min(arr.shape[:2]) < MIN_SIDE:
        raise ImageReadError(path, f"image is too small ({'x'.join(map(str, arr.shape[:2]))}); "
                                   f"a cell image needs at least {MIN_SIDE} px per side")
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise ImageReadError(path, f"image has {arr.shape[0] * arr.shape[1]:,} pixels, more "
                                   f"than {MAX_PIXELS:,}; cut it into smaller fields or single "
                                   f"cells first")
    return np.ascontiguousarray(_to_rgb(_to_uint8(np.asarray(arr), declared), path))


def image_sizes(paths) -> np.ndarray:
    """Width and height of each image, int64 of shape (n, 2), from the headers alone (no pixel
    is decoded)."""
    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(image.size)
    return np.asarray(sizes, dtype=np.int64).reshape(-1, 2)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask image as a 2-D uint8 array (values as stored; grey if the file is RGB)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "mask file not found")
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L") if img.mode not in ("L", "1") else img)
    except Exception as exc:
        raise ImageReadError(path, f"cannot decode mask ({type(exc).__name__}: {exc})") from exc
    return _to_uint8(arr)


def read_cell_mask(path: str | Path) -> np.ndarray:
    """Read a whole-cell ground-truth mask as a boolean (H, W) array.

    0/1 masks count every non-zero pixel; 8-bit masks count values >= 64, so Zheng-2018's
    0 / 128 (cytoplasm) / 255 (nucleus) labels, with their stray values, give nucleus+cytoplasm.
    """
    arr = read_mask(path)
    if arr.max(initial=0) <= 1:
        return arr > 0
    return arr >= 64

"""Reading and writing images: RGB(A), 8/16-bit PNG and TIFF, float TIFF, OpenEXR; writes are atomic.

OpenEXR output follows the compositing convention: linear light (the sRGB transfer function is removed) and
premultiplied alpha, half (16-bit) or full (32-bit) float, ZIP compression. OpenEXR input is read the same way back:
R, G, B (or a grey Y) and an optional A, linear and premultiplied, become straight sRGB float32 in [0, 1] — keyface
works on display-referred pixels, so values above 1 (HDR highlights) and below 0 are clipped, and colour under zero
alpha is 0. Float images (EXR or TIFF) holding NaN or infinity are refused.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import KeyfaceError
from .io import atomic_output, atomic_write_bytes
from .pixels import full_scale, linear_to_srgb, quantise, srgb_to_linear, unpremultiply

MAX_PIXELS = 200_000_000  # 14,142² (an 8K frame is 33 M): larger images are refused before decoding (a file that
#                           declares 30,000² decodes to 3.6 GB of RGBA, and a "decompression bomb" does so from 3.5 MB)


def max_pixels() -> int:
    """The pixel limit: :data:`MAX_PIXELS`, or ``$KEYFACE_MAX_PIXELS`` when set (for documents really that large)."""
    import os

    value = os.environ.get("KEYFACE_MAX_PIXELS")
    try:
        return int(value) if value else MAX_PIXELS
    except ValueError:
        raise KeyfaceError(f"KEYFACE_MAX_PIXELS must be a whole number of pixels, got {value!r}") from None


def image_header(path: Path) -> tuple[tuple[int, int] | None, int]:
    """((width, height), EXIF orientation 1–8) from the file's header without decoding its pixels (size None when
    Pillow cannot tell, orientation 1 when there is none)."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # keyface applies its own limit (max_pixels), with its own message
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112, 1) if im.format in ("JPEG", "TIFF", "PNG", "WEBP") else 1
            return im.size, orientation if orientation in range(1, 9) else 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None, 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels as the EXIF orientation tag says they are to be shown (2–8: mirrored and/or rotated)."""
    if orientation in (5, 6, 7, 8):
        img = np.rot90(img, -1 if orientation in (5, 6) else 1)  # 6: 90° clockwise, 8: 90° counter-clockwise
    if orientation in (2, 5, 7):
        img = img[:, ::-1]
    elif orientation == 4:
        img = img[::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    return np.ascontiguousarray(img)


def read_image(path: str | Path) -> np.ndarray:
    """H×W×3 (RGB) or H×W×4 (RGBA) array in the file's own depth (uint8, uint16 or float32), turned as its EXIF
    orientation says (as viewers show it). Images above :func:`max_pixels` are refused before their pixels are
    decoded."""
    path = Path(path)
    if not path.is_file():
        raise KeyfaceError(f"image not found: {path}")
    size, orientation = image_header(path)
    if size is not None and size[0] * size[1] > max_pixels():
        raise KeyfaceError(f"{path} is {size[0]}×{size[1]} pixels, above keyface's limit of {max_pixels():,} "
                           "(set KEYFACE_MAX_PIXELS to allow larger images)")
    if path.suffix.lower() == ".exr":
        return _finite(read_exr(path), path)
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise KeyfaceError(f"cannot read image {path}: not a readable PNG, TIFF or JPEG file")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    else:
        raise KeyfaceError(f"cannot read image {path}: {img.shape[2]} channels (expected 1, 3 or 4)")
    if img.shape[2] == 4 and path.suffix.lower() in (".tif", ".tiff"):
        img = _tiff_straight(path, img)
    if img.dtype.kind == "f":
        img = np.clip(_finite(img.astype(np.float32, copy=False), path), 0, 1)
    elif img.dtype not in (np.uint8, np.uint16):
        raise KeyfaceError(f"cannot read image {path}: {img.dtype} samples (keyface reads 8- and 16-bit integer and "
                           "float images)")
    return img if orientation == 1 else apply_orientation(img, orientation)


def _tiff_straight(path: Path, img: np.ndarray) -> np.ndarray:
    """A 4-channel TIFF as straight RGBA: OpenCV premultiplies 8-bit files with unassociated alpha (decode those with
    Pillow instead) and passes associated (premultiplied) alpha through (divide it out)."""
    from .tiff import alpha_kind

    kind = alpha_kind(path)
    if kind == 2 and img.dtype == np.uint8:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGBA"))
    if kind == 1:
        scale = full_scale(img.dtype)
        out = unpremultiply(img.astype(np.float32) / np.float32(scale))
        return out if img.dtype.kind == "f" else quantise(out, img.dtype)
    return img


def _finite(img: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(img).all():
        raise KeyfaceError(f"{path} holds NaN or infinite values")
    return img


def read_exr(path: Path) -> np.ndarray:
    """An OpenEXR file (module docstring: linear premultiplied in, straight sRGB float32 out); the pixel limit is
    checked on the header before any pixels are read."""
    import OpenEXR

    def fail(why):
        return KeyfaceError(f"cannot read image {path}: {why}")

    try:
        header = OpenEXR.File(str(path), header_only=True).header()
        lo, hi = header["dataWindow"]
    except Exception as exc:  # the binding raises plain exceptions for damaged files
        raise fail(f"not a readable OpenEXR file ({exc})") from None
    w, h = int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1)
    if w * h > max_pixels():
        raise KeyfaceError(f"{path} is {w}×{h} pixels, above keyface's limit of {max_pixels():,} "
                           "(set KEYFACE_MAX_PIXELS to allow larger images)")
    try:
        channels = {k: c.pixels for k, c in OpenEXR.File(str(path), separate_channels=True).channels().items()}
    except Exception as exc:
        raise fail(f"its pixels cannot be decoded ({exc})") from None
    names = ("R", "G", "B") if {"R", "G", "B"} <= set(channels) else ("Y",) * 3 if "Y" in channels else None
    if names is None:
        raise fail(f"no R, G, B or Y channels (it has {', '.join(sorted(channels)) or 'none'}); keyface reads "
                   "the main image's plain channels")
    planes = [channels[n] for n in names] + ([channels["A"]] if "A" in channels else [])
    if any(p.dtype.kind != "f" for p in planes):
        raise fail("integer channels (keyface reads half and float EXR images)")
    x = _finite(np.stack(planes, axis=-1).astype(np.float32), path)
    if x.shape[2] == 4:
        x = unpremultiply(x)  # straight, clipped to [0, 1]
    return np.concatenate([linear_to_srgb(x[..., :3]), x[..., 3:]], axis=2).astype(np.float32)


def write_exr(path: Path, img: np.ndarray, bits: int = 16) -> None:
    """Linear, premultiplied RGB(A) OpenEXR (half or float), written atomically."""
    import OpenEXR

    if bits not in (16, 32):
        raise KeyfaceError("EXR holds 16-bit (half) or 32-bit float")
    v = img.astype(np.float64) / full_scale(img.dtype)
    out = srgb_to_linear(v[..., :3])
    if img.shape[2] == 4:
        out = np.concatenate([out * v[..., 3:], v[..., 3:]], axis=2)
    out = out.astype(np.float16 if bits == 16 else np.float32)
    if not path.parent.is_dir():
        raise KeyfaceError(f"output folder does not exist: {path.parent}")
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with atomic_output(path, ".exr") as tmp, OpenEXR.File(header, {"RGBA" if out.shape[2] == 4 else "RGB": out}) as f:
        f.write(tmp)


def write_image(path: str | Path, img: np.ndarray, exr_bits: int = 16) -> None:
    """Write RGB(A) to PNG/TIFF/EXR (by extension) atomically; the depth is kept where the format allows it."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".exr":
        write_exr(path, img, exr_bits)
        return
    if ext not in (".png", ".tif", ".tiff"):
        raise KeyfaceError(f"cannot write {path}: use .png, .tif, .tiff or .exr")
    if ext == ".png" and img.dtype not in (np.uint8, np.uint16):
        raise KeyfaceError("PNG holds 8- or 16-bit images; write float results as .tiff")
    if ext in (".tif", ".tiff"):
        from .tiff import write_tiff

        if not path.parent.is_dir():
            raise KeyfaceError(f"output folder does not exist: {path.parent}")
        if img.dtype not in (np.uint8, np.uint16, np.float32) or img.ndim != 3 or img.shape[2] not in (3, 4):
            raise KeyfaceError(f"cannot write {path}: TIFF takes RGB(A) 8/16-bit or float32 images")
        write_tiff(path, img)
        return
    code = cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, code))
    if not ok:
        raise KeyfaceError(f"cannot encode {path}")
    if not path.parent.is_dir():
        raise KeyfaceError(f"output folder does not exist: {path.parent}")
    atomic_write_bytes(path, buf.tobytes())

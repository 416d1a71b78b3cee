"""Reading and writing images: RGB(A), 8/16-bit PNG and TIFF, float TIFF; writes are atomic."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import KeyfaceError
from .io import atomic_write_bytes


def read_image(path: str | Path) -> np.ndarray:
    """H×W×3 (RGB) or H×W×4 (RGBA) array in the file's own depth (uint8, uint16 or float32)."""
    path = Path(path)
    if not path.is_file():
        raise KeyfaceError(f"image not found: {path}")
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
    return img


def write_image(path: str | Path, img: np.ndarray) -> None:
    """Write RGB(A) to PNG/TIFF (by extension) atomically; the depth is kept where the format allows it."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".png", ".tif", ".tiff"):
        raise KeyfaceError(f"cannot write {path}: use .png, .tif or .tiff")
    if ext == ".png" and img.dtype not in (np.uint8, np.uint16):
        raise KeyfaceError("PNG holds 8- or 16-bit images; write float results as .tiff")
    code = cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, code))
    if not ok:
        raise KeyfaceError(f"cannot encode {path}")
    if not path.parent.is_dir():
        raise KeyfaceError(f"output folder does not exist: {path.parent}")
    atomic_write_bytes(path, buf.tobytes())

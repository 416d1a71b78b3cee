"""TIFF alpha done right, where OpenCV does not: OpenCV writes 4-channel TIFFs without the ExtraSamples tag (other
programs then do not know the fourth channel is alpha), and reads 8-bit TIFFs with unassociated (straight) alpha —
what Krita, GIMP, Photoshop and Pillow write — premultiplied.

* :func:`write_tiff`: baseline TIFF 6.0, one image, chunky RGB(A), 8/16-bit unsigned or 32-bit float, Deflate strips,
  ExtraSamples = 2 (unassociated alpha: keyface's pixels are straight) for RGBA.
* :func:`alpha_kind`: the ExtraSamples value of a file's first image (0 unspecified, 1 associated, 2 unassociated, None
  without an extra sample), from its header alone.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from .io import atomic_output

_TYPES = {1: 1, 2: 1, 3: 2, 4: 4, 16: 8}  # TIFF field type → bytes (BYTE, ASCII, SHORT, LONG, LONG8)
ROWS_PER_STRIP_BYTES = 1 << 16


def write_tiff(path: Path, img: np.ndarray, associated: bool = False) -> None:
    """(H, W, 3|4) uint8/uint16/float32 → ``path`` (atomic); ``associated``: the pixels are premultiplied (tagged
    ExtraSamples = 1; keyface's own output is straight)."""
    h, w, c = img.shape
    kind = {np.dtype(np.uint8): (8, 1), np.dtype(np.uint16): (16, 1), np.dtype(np.float32): (32, 3)}.get(img.dtype)
    if kind is None or c not in (3, 4):
        raise ValueError(f"TIFF writer takes RGB(A) uint8/uint16/float32, got {img.dtype} × {c}")
    bits, sample_format = kind
    data = np.ascontiguousarray(img).astype(img.dtype.newbyteorder("<"), copy=False)
    row = w * c * img.dtype.itemsize
    rows = max(1, ROWS_PER_STRIP_BYTES // row)
    strips = [zlib.compress(data[y:y + rows].tobytes(), 6) for y in range(0, h, rows)]
    entries = [(256, 4, [w]), (257, 4, [h]), (258, 3, [bits] * c), (259, 3, [8]), (262, 3, [2]),
               (273, 4, None), (277, 3, [c]), (278, 4, [rows]), (279, 4, [len(s) for s in strips]),
               (284, 3, [1]), (339, 3, [sample_format] * c)]
    if c == 4:
        entries.append((338, 3, [1 if associated else 2]))
    if sample_format == 3:
        entries.append((317, 3, [1]))  # no predictor (explicit for float readers)
    entries.sort()
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    extra = bytearray()  # values that do not fit in 4 bytes, after the IFD
    pixel_base = ifd_offset + ifd_size
    # first pass: place out-of-line values, then the strips
    out_of_line = {}
    for tag, typ, values in entries:
        if values is not None and len(values) * _TYPES[typ] > 4:
            out_of_line[tag] = pixel_base + len(extra)
            extra += _pack(typ, values)
            if len(extra) % 2:
                extra += b"\0"
    strips_base = pixel_base + len(extra) + (4 * len(strips) if len(strips) > 1 else 0)
    offsets, pos = [], strips_base
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    if len(strips) > 1:
        out_of_line[273] = pixel_base + len(extra)
        extra += _pack(4, offsets)
    ifd = bytearray(struct.pack("<H", len(entries)))
    for tag, typ, values in entries:
        values = offsets if tag == 273 else values
        if tag in out_of_line:
            ifd += struct.pack("<HHII", tag, typ, len(values), out_of_line[tag])
        else:
            ifd += struct.pack("<HHI", tag, typ, len(values)) + _pack(typ, values).ljust(4, b"\0")
    ifd += struct.pack("<I", 0)
    with atomic_output(path, ".tif") as tmp, open(tmp, "wb") as fh:
        fh.write(b"II*\0" + struct.pack("<I", ifd_offset) + bytes(ifd) + bytes(extra))
        for s in strips:
            fh.write(s)


def _pack(typ: int, values) -> bytes:
    return struct.pack("<" + {1: "B", 3: "H", 4: "I"}[typ] * len(values), *values)


def alpha_kind(path: Path) -> int | None:
    """ExtraSamples[0] of the first image (module docstring), or None (no extra sample, or not a TIFF)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None:
                return None
            magic = struct.unpack(order + "H", head[2:4])[0]
            if magic == 42:
                fh.seek(struct.unpack(order + "I", head[4:8])[0])
                count, entry, count_fmt = struct.unpack(order + "H", fh.read(2))[0], 12, "I"
            elif magic == 43:  # BigTIFF
                fh.seek(struct.unpack(order + "Q", head[8:16])[0])
                count, entry, count_fmt = struct.unpack(order + "Q", fh.read(8))[0], 20, "Q"
            else:
                return None
            table = fh.read(entry * min(count, 4096))
    except (OSError, struct.error):
        return None
    for i in range(0, len(table) - entry + 1, entry):
        tag, typ = struct.unpack(order + "HH", table[i:i + 4])
        if tag == 338:
            n = struct.unpack(order + count_fmt, table[i + 4:i + 4 + (4 if count_fmt == "I" else 8)])[0]
            value_at = i + 4 + (4 if count_fmt == "I" else 8)
            if n < 1 or n > 2 or typ != 3:  # more than two extra samples: not a colour image keyface reads
                return None
            return struct.unpack(order + "H", table[value_at:value_at + 2])[0]
    return None

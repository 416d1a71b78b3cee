"""A small reader for Krita's .kra files, written for the tests (checks what Krita saved without Krita).

A .kra is a zip: ``maindoc.xml`` (image size, colour space, the layer tree), per layer ``<image>/layers/<file>``
pixel data and, for animated layers, ``<file>.keyframes.xml`` naming one pixel-data file per keyframe. Pixel data
(format version 2): a text header (``VERSION 2``, ``TILEWIDTH``, ``TILEHEIGHT``, ``PIXELSIZE``, ``DATA <tiles>``), then
per tile ``x,y,LZF,<bytes>\\n`` and that many bytes: a flag byte (1 = LZF-compressed, 0 = raw) and the tile's bytes
"linearised" (byte plane after byte plane: byte 0 of every pixel, then byte 1, …). Tiles absent from the file hold the
layer's default pixel (transparent here). RGBA U8 pixels are stored B, G, R, A.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zipfile

import numpy as np

NS = {"k": "http://www.calligra.org/DTD/krita", "kf": "http://www.calligra.org/DTD/krita-keyframes"}


def lzf_decompress(data: bytes, size: int) -> bytes:
    """liblzf's format: a control byte < 32 starts a literal run of ctrl+1 bytes; otherwise a back reference of
    length (ctrl >> 5) + 2 (a length of 7 continues in the next byte) at distance ((ctrl & 31) << 8 | next) + 1."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            out += data[i:i + ctrl + 1]
            i += ctrl + 1
            continue
        length = ctrl >> 5
        if length == 7:
            length += data[i]
            i += 1
        ref = len(out) - ((ctrl & 31) << 8) - data[i] - 1
        i += 1
        length += 2
        if ref < 0:
            raise ValueError("corrupt LZF data")
        if ref + length <= len(out):
            out += out[ref:ref + length]
        else:  # overlapping copy: a repeated pattern
            for k in range(length):
                out.append(out[ref + k])
    if len(out) != size:
        raise ValueError(f"LZF tile decompressed to {len(out)} bytes, expected {size}")
    return bytes(out)


class Kra:
    def __init__(self, path):
        self.zip = zipfile.ZipFile(path)
        root = ET.fromstring(self.zip.read("maindoc.xml"))
        image = root.find("k:IMAGE", NS)
        self.name = image.get("name")
        self.width, self.height = int(image.get("width")), int(image.get("height"))
        self.colorspace = image.get("colorspacename")
        self.layers = [dict(el.attrib) for el in image.iter(f"{{{NS['k']}}}layer")]
        self.annotations = {el.get("type") for el in image.iter(f"{{{NS['k']}}}Annotation")}
        anim = image.find("k:animation", NS)
        self.fps = float(anim.find("k:framerate", NS).get("value")) if anim is not None else None

    def layer(self, name: str) -> dict:
        hits = [la for la in self.layers if la["name"] == name]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} layers named {name!r}")
        return hits[0]

    def annotation(self, kind: str) -> bytes:
        return self.zip.read(f"{self.name}/annotations/{kind}")

    def keyframes(self, layer: dict) -> dict[int, str]:
        """time → pixel-data file of an animated layer."""
        if "keyframes" not in layer:
            return {}
        root = ET.fromstring(self.zip.read(f"{self.name}/layers/{layer['keyframes']}"))
        out = {}
        for ch in root.iter(f"{{{NS['kf']}}}channel"):
            if ch.get("name") == "content":
                for kf in ch.iter(f"{{{NS['kf']}}}keyframe"):
                    out[int(kf.get("time"))] = kf.get("frame")
        return out

    def tiles(self, file: str) -> tuple[dict, int, int]:
        """(tiles {(x, y): raw bytes (compressed)}, pixel size, tile size) of one pixel-data file."""
        blob = self.zip.read(f"{self.name}/layers/{file}")
        pos, header = 0, {}
        for _ in range(5):
            end = blob.index(b"\n", pos)
            key, value = blob[pos:end].decode().split(" ", 1)
            header[key] = value
            pos = end + 1
        if header["VERSION"] != "2":
            raise ValueError(f"unsupported tile format version {header['VERSION']}")
        tw, th, px = int(header["TILEWIDTH"]), int(header["TILEHEIGHT"]), int(header["PIXELSIZE"])
        if tw != th:
            raise ValueError("non-square tiles")
        tiles = {}
        for _ in range(int(header["DATA"])):
            end = blob.index(b"\n", pos)
            x, y, kind, size = blob[pos:end].decode().split(",")
            if kind != "LZF":
                raise ValueError(f"unsupported tile compression {kind}")
            pos = end + 1
            tiles[(int(x), int(y))] = blob[pos:pos + int(size)]
            pos += int(size)
        return tiles, px, tw

    def pixels(self, file: str, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Decode a pixel-data file to (h, w, pixel size) uint8 over ``region`` (x, y, w, h; default: the image),
        channel bytes as stored (BGRA for RGBA U8). Only tiles that touch the region are decompressed."""
        x0, y0, w, h = region or (0, 0, self.width, self.height)
        tiles, px, ts = self.tiles(file)
        out = np.zeros((h, w, px), np.uint8)
        for (tx, ty), raw in tiles.items():
            if tx + ts <= x0 or ty + ts <= y0 or tx >= x0 + w or ty >= y0 + h:
                continue
            body = lzf_decompress(raw[1:], ts * ts * px) if raw[0] == 1 else raw[1:]
            tile = np.frombuffer(body, np.uint8).reshape(px, ts * ts).T.reshape(ts, ts, px)
            sx, sy = max(tx, x0), max(ty, y0)
            ex, ey = min(tx + ts, x0 + w), min(ty + ts, y0 + h)
            out[sy - y0:ey - y0, sx - x0:ex - x0] = tile[sy - ty:ey - ty, sx - tx:ex - tx]
        return out

    def extent(self, file: str) -> tuple[int, int, int, int]:
        """Bounds (x0, y0, x1, y1) of the stored tiles."""
        tiles, _, ts = self.tiles(file)
        xs, ys = [x for x, _ in tiles], [y for _, y in tiles]
        return min(xs), min(ys), max(xs) + ts, max(ys) + ts

"""A small stand-in for the parts of Krita's libkis API the keyface docker uses (Krita 5.1 behaviour, as checked in
the real application: BGRA bytes, straight alpha, importAnimation adding a new animated layer)."""

from __future__ import annotations

import itertools
import uuid

import numpy as np

from keyface.addon.krita.adapter import bgra_bytes_to_rgba, rgba_to_bgra_bytes
from keyface.core.imageio import read_image

_DTYPES = {"U8": np.uint8, "U16": np.uint16, "F32": np.float32}


class Node:
    def __init__(self, name, w, h, model="RGBA", depth="U8", kind="paintlayer", pixels=None):
        self._name, self._model, self._depth, self._type = name, model, depth, kind
        self._id = uuid.uuid4()
        self.children: list[Node] = []
        self.frames: dict[int, np.ndarray] = {}
        self.pixels = pixels if pixels is not None else np.zeros((h, w, 4), _DTYPES[depth])
        self.writes = 0

    def name(self):
        return self._name

    def setName(self, name):
        self._name = name

    def uniqueId(self):
        return self._id

    def type(self):
        return self._type

    def colorModel(self):
        return self._model

    def colorDepth(self):
        return self._depth

    def childNodes(self):
        return list(self.children)

    def animated(self):
        return bool(self.frames)

    def pixelData(self, x, y, w, h):
        return rgba_to_bgra_bytes(self.pixels[y:y + h, x:x + w])

    def setPixelData(self, data, x, y, w, h):
        self.writes += 1
        self.pixels[y:y + h, x:x + w] = bgra_bytes_to_rgba(data, w, h, self.pixels.dtype)


class Selection:
    def __init__(self, x, y, w, h):
        self._r = (x, y, w, h)

    def x(self):
        return self._r[0]

    def y(self):
        return self._r[1]

    def width(self):
        return self._r[2]

    def height(self):
        return self._r[3]


class Document:
    def __init__(self, w, h, depth="U8", pixels=None):
        self._w, self._h = w, h
        self.root = Node("root", w, h, kind="grouplayer")
        self.source = Node("Background", w, h, depth=depth, pixels=pixels)
        self.root.children.append(self.source)
        self.active = self.source
        self.time, self.fps, self.clip = 0, 24, (0, 100)
        self.annotations: dict[str, bytes] = {}
        self.selection_rect = None
        self.imported: list[tuple[list[str], int, int]] = []
        self._layer_counter = itertools.count(1)
        self.file_name = ""  # "" = never saved

    def fileName(self):
        return self.file_name

    def width(self):
        return self._w

    def height(self):
        return self._h

    def rootNode(self):
        return self.root

    def activeNode(self):
        return self.active

    def selection(self):
        return None if self.selection_rect is None else Selection(*self.selection_rect)

    def currentTime(self):
        return self.time

    def setCurrentTime(self, t):
        self.time = t

    def framesPerSecond(self):
        return self.fps

    def fullClipRangeStartTime(self):
        return self.clip[0]

    def fullClipRangeEndTime(self):
        return self.clip[1]

    def annotationTypes(self):
        return list(self.annotations)

    def annotation(self, kind):
        return self.annotations.get(kind, b"")

    def setAnnotation(self, kind, description, data):
        self.annotations[kind] = bytes(data)

    def importAnimation(self, files, first, step):
        """As Krita: a new animated paint layer on top, one keyframe per file from ``first`` by ``step``."""
        self.imported.append((list(files), first, step))
        layer = Node(f"Paint Layer {next(self._layer_counter)}", self._w, self._h, depth=self.source.colorDepth())
        for i, f in enumerate(files):
            img = read_image(f)
            if img.shape[:2] != (self._h, self._w):
                return False
            layer.frames[first + i * step] = img
        self.root.children.append(layer)
        return True


class App:
    def __init__(self, docs=()):
        self.docs = list(docs)
        self.active = self.docs[0] if self.docs else None

    def activeDocument(self):
        return self.active

    def documents(self):
        return list(self.docs)

"""The one box type of keyface: a pixel rectangle (x, y, w, h) of a document, and the face box convention.

**The face box** (a scene's ``face_box``, ``--box``, the editors' box) means the same for every generator: THA's head
box. In THA's 512² character frame it is columns 192–320, rows 64–192, i.e. ``Box(192, 64, 128, 128)``; each
generator derives its own working region from it (:meth:`keyface.core.generator.Generator.working_box`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import KeyfaceError

THA_SIZE = 512  # THA's character frame is 512²
THA_HEAD = (192, 64, 128, 128)  # the face box inside it (x, y, w, h)


class BoxError(KeyfaceError, ValueError):
    """A box that cannot be read or does not fit its image."""


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str) -> Box:
        try:
            x, y, w, h = (int(v) for v in str(text).split(","))
        except ValueError:
            raise BoxError(f"box must be x,y,w,h (integers), got {text!r}") from None
        return cls(x, y, w, h)

    @classmethod
    def of(cls, box) -> Box:
        """A Box from a Box or an (x, y, w, h) sequence."""
        return box if isinstance(box, Box) else cls(*(int(v) for v in box))

    @classmethod
    def square(cls, cx: float, cy: float, side: float, width: int, height: int) -> Box:
        """The square of ``side`` centred at (cx, cy), moved (not shrunk) to lie inside a width × height image; shrunk
        only when the image is smaller than the side."""
        side = int(min(side, width, height))
        x = int(round(min(max(cx - side / 2, 0), width - side)))
        y = int(round(min(max(cy - side / 2, 0), height - side)))
        return cls(x, y, side, side)

    def inside(self, width: int, height: int) -> bool:
        return self.w >= 1 and self.h >= 1 and self.x >= 0 and self.y >= 0 and self.x + self.w <= width and \
            self.y + self.h <= height

    def check(self, width: int, height: int) -> Box:
        if not self.inside(width, height):
            raise BoxError(f"box {self.x},{self.y},{self.w},{self.h} does not fit the {width}×{height} image")
        return self

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, columns) of the box, for indexing an image array."""
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2

    def iou(self, other: Box) -> float:
        """Intersection over union."""
        ix = max(0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        return inter / float(self.w * self.h + other.w * other.h - inter)

    def __iter__(self):  # (x, y, w, h), so a Box unpacks and serialises like the tuples scenes store
        return iter((self.x, self.y, self.w, self.h))


HEAD_FACE_CENTER = (0.5, 0.45)  # the face box's centre in a head crop (``keyface synth --framing head``), fractions


def head_crop(face: Box, width: int, height: int) -> Box:
    """The head crop around a face box, as ``keyface synth --framing head`` frames a character: the square of twice
    the face box's side, placed so that the face box's centre sits at :data:`HEAD_FACE_CENTER` of it, moved back inside
    the document where it leaves it (shrunk only when the document is smaller)."""
    x, y, w, h = Box.of(face)
    s = max(w, h)
    return Box.square(x + w / 2, y + h / 2 + (0.5 - HEAD_FACE_CENTER[1]) * 2 * s, 2 * s, width, height)


def tha_frame(face_box: Box) -> Box:
    """THA's square character frame around a face box ``[x, y, s, s]``: ``[x − 1.5·s, y − 0.5·s, 4·s, 4·s]`` (the
    face box is the head box at columns 192–320, rows 64–192 of the 512² frame). A non-square face box uses its larger
    side about its centre. The frame may leave the document (the render path pads it with transparency)."""
    cx, cy = face_box.center
    s = max(face_box.w, face_box.h)
    return Box(int(round(cx - 2 * s)), int(round(cy - s)), int(round(4 * s)), int(round(4 * s)))


"""The one face box convention (THA's head box) and the regions generators derive from it."""

import numpy as np
import pytest

from keyface.core.box import THA_HEAD, Box, tha_frame
from keyface.core.generator import Generated, Generator, default_face_box
from keyface.core.pipeline import FrameJob


def test_tha_frame_around_the_head_box():
    assert tuple(tha_frame(Box(*THA_HEAD))) == (0, 0, 512, 512)  # THA's own 512² frame
    assert tuple(tha_frame(Box(584, 428, 256, 256))) == (200, 300, 1024, 1024)  # ×2, moved
    assert tuple(tha_frame(Box(10, 10, 100, 80))) == (-140, -50, 400, 400)  # larger side, about the centre
    assert tuple(default_face_box(np.zeros((512, 512, 4), np.uint8))) == THA_HEAD  # THA's input format as it is
    assert Box(0, 0, 10, 10).iou(Box(5, 0, 10, 10)) == pytest.approx(50 / 150)


class Mover(Generator):
    """Shows what it saw (records its input) and moves everything right by 2 grid pixels × the value."""

    schema = "tha45"
    grid = (32, 32)

    def __init__(self):
        self.seen = None

    def working_box(self, face_box, source):
        return tha_frame(face_box)

    def __call__(self, low, values):
        self.seen = low.copy()
        k = int(round(2 * values[0, -1]))
        flow = np.zeros(low.shape[:3] + (2,), np.float32)
        flow[..., 0] = -k
        out = np.roll(low, k, axis=2)
        out[:, :, :k] = low[:, :, :1]
        return Generated(out, flow)


@pytest.mark.parametrize("channels", [3, 4])
def test_a_region_that_leaves_the_document_sees_transparency(channels):
    # THA's frame around a face box near the top-left corner reaches outside the document: the generator sees
    # transparent pixels there, the frame keeps the document's size and depth, outside the region it is bit-identical.
    rng = np.random.default_rng(0)
    doc = rng.integers(0, 256, (200, 300, channels), dtype=np.uint8)
    if channels == 4:
        doc[..., 3] = 255
    gen = Mover()
    job = FrameJob.prepare(doc, gen, (20, 10, 40, 40))
    assert tuple(job.box) == (-40, -10, 160, 160) and job.crop is not None
    values = np.zeros((1, 45), np.float32)
    values[0, -1] = 1.0
    frame = job.frames(values)[0]
    assert frame.shape == doc.shape and frame.dtype == doc.dtype
    seen = gen.seen[0]  # 160² at 32²: 5 px a grid pixel; 40 px of the frame's left and 10 px of its top are outside
    assert (seen[:, :7, 3] == 0).all() and (seen[:1, :, 3] == 0).all() and (seen[3:, 9:, 3] > 0.99).all()
    outside = np.ones(doc.shape[:2], bool)
    outside[:150, :120] = False
    assert np.array_equal(frame[outside], doc[outside])
    assert not np.array_equal(frame[:150, :120], doc[:150, :120])
    rest = job.frames(np.zeros((1, 45), np.float32))[0]
    assert np.array_equal(rest, doc)


def test_a_region_outside_the_document_is_an_error():
    from keyface.core.errors import KeyfaceError

    with pytest.raises(KeyfaceError, match="does not overlap"):
        FrameJob.prepare(np.zeros((100, 100, 4), np.uint8), Mover(), (500, 500, 40, 40))
    with pytest.raises(KeyfaceError, match="has no area"):
        FrameJob.prepare(np.zeros((100, 100, 4), np.uint8), Mover(), (10, 10, 0, 5))

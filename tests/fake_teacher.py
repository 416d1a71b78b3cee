"""A fast stand-in for THA3 in tests (schema tha45, THA's frame at 64²) and a tiny random ATW student."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from keyface.core import models
from keyface.core.box import tha_frame
from keyface.core.generator import Generated, Generator
from keyface.core.rig import get_schema

TH = get_schema("tha45")
EYES = (slice(14, 18), slice(25, 39))  # in the fake teacher's 64² grid of THA's frame: the eyes' band
MOUTH = (slice(19, 22), slice(29, 35))


class FakeTeacher(Generator):
    """THA-framed, 64²: darkens the eyes' band with the winks, lightens the mouth with ``mouth_aaa``; moves nothing."""

    schema = "tha45"
    grid = (64, 64)
    batch_size = 2

    def working_box(self, face_box, source):
        return tha_frame(face_box)

    def __call__(self, low, values):
        out = low.copy()
        wink = (values[:, TH.index("eye_wink_left")] + values[:, TH.index("eye_wink_right")]) / 2
        aaa = values[:, TH.index("mouth_aaa")]
        out[:, EYES[0], EYES[1], :3] *= (1 - 0.7 * wink)[:, None, None, None]
        out[:, MOUTH[0], MOUTH[1], :3] += (0.5 * aaa)[:, None, None, None] * (1 - out[:, MOUTH[0], MOUTH[1], :3])
        return Generated(out.astype(np.float32), np.zeros(out.shape[:3] + (2,), np.float32))


@contextmanager
def registered_pair(folder):
    """``test-teacher`` (:class:`FakeTeacher`) and ``test-atw-student`` (random 64² ATW weights in ``folder``),
    registered for the ``with`` block."""
    import torch

    from keyface.core.methods.atw import load
    from keyface.core.methods.atw.networks import ATWConfig, save_generator
    from keyface.core.methods.atw.networks import Generator as ATWGenerator

    torch.manual_seed(0)
    path = folder / "atw_au17.safetensors"
    save_generator(ATWGenerator(ATWConfig(grid=64, base=4, critic_base=4, motion_blocks=1, refine_blocks=1)), path)
    infos = (models.ModelInfo("test-teacher", "test", "tha45", "fake THA teacher (tests)", None,
                              lambda info, device: FakeTeacher()),
             models.ModelInfo("test-atw-student", "atw", "au17", "random weights (tests)", path, load))
    with models.registered(*infos):
        yield "test-teacher", "test-atw-student"

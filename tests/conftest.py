"""Shared fixtures. Tests that use ../shared (real artwork, official weights) skip cleanly when it is absent."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("KEYFACE_SHARED", ROOT.parent / "shared"))


@pytest.fixture
def shared():
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture
def image_file(tmp_path):
    """A small RGBA PNG on disk."""
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "character.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 4), dtype=np.uint8), "RGBA").save(path)
    return path


@pytest.fixture
def scene_doc(image_file):
    """A valid scene document whose source is ``image_file`` (same folder)."""
    return {
        "keyface_scene": 1,
        "source": image_file.name,
        "schema": "au17",
        "model": None,
        "face_box": [8, 4, 32, 32],
        "fps": 24,
        "frame_range": [0, 24],
        "output": {"directory": "frames", "size": None, "format": "png", "bit_depth": 8, "reswarp": "multiscale"},
        "tracks": {
            "AU12": {"keys": [{"frame": 0, "value": 0, "interpolation": "linear"}, {"frame": 12, "value": 5},
                              {"frame": 24, "value": 1}]},
            "AU45": {"keys": [{"frame": 0, "value": 0, "interpolation": "constant"}, {"frame": 6, "value": 5}]},
        },
    }


@pytest.fixture
def write_scene(tmp_path):
    def write(doc, name="scene.json"):
        path = tmp_path / name
        path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
        return path

    return write


@pytest.fixture(scope="session")
def head_data(tmp_path_factory):
    """A tiny paired dataset in the head framing (``keyface synth --framing head``: F³A's and style mapping's crop):
    4 characters × 6 poses at 64², one character held out for testing."""
    from keyface.core.synth.dataset import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("head") / "data"
    write_dataset(root, SynthConfig(characters=4, poses_per_character=6, size=64, framing="head", seed=3,
                                    test_fraction=0.25), workers=1)
    return root

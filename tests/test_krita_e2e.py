"""End to end in real Krita (Debian's krita 5.1 under Xvfb): `keyface krita install` into a throw-away profile, a
driver plugin (tests/krita_e2e) presses the docker's buttons on a 3840×2160 RGBA document, saves a .kra, reopens it;
the saved file is then checked here with our own .kra reader (tests/kra.py), frame by frame, against keyface's own
render of the same scene. Skipped when krita or xvfb-run is not installed (`apt-get install krita xvfb xauth`)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from kra import Kra

from keyface.addon.krita import adapter, install
from keyface.core.imageio import read_image
from keyface.core.pipeline import render_scene

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "core" / "data" / "example"
BOX = [1650, 270, 540, 540]  # the bundled example's face box (THA's head box)
REGION = [1650, 338, 540, 540]  # ATW's crop for it (the face box moved down by an eighth of its side)
pytestmark = pytest.mark.skipif(not (shutil.which("krita") and shutil.which("xvfb-run")),
                                reason="Krita and xvfb-run are not installed (apt-get install krita xvfb xauth)")


def run_krita(tmp_path: Path, depth: str, keys: dict, inject_failure: bool = False) -> tuple[dict, Path]:
    home = tmp_path / "home"
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"),
               XDG_CACHE_HOME=str(home / "cache"), QT_QPA_PLATFORM="xcb")
    pykrita, kritarc = home / "data" / "krita" / "pykrita", home / "config" / "kritarc"
    install.install(pykrita, kritarc)
    shutil.copytree(HERE / "krita_e2e" / "keyface_e2e", pykrita / "keyface_e2e")
    shutil.copy(HERE / "krita_e2e" / "keyface_e2e.desktop", pykrita)
    kritarc.write_text(install.set_ini_value(kritarc.read_text(), "python", "enable_keyface_e2e", "true"))
    out = tmp_path / "out"
    out.mkdir()
    cfg = {"out": str(out), "image": str(EXAMPLE / "character.png"), "depth": depth, "box": BOX, "keys": keys,
           "timeout": 500, "inject_failure": inject_failure}
    (tmp_path / "e2e.json").write_text(json.dumps(cfg))
    env["KEYFACE_E2E"] = str(tmp_path / "e2e.json")
    log = ""
    for _ in range(2):  # Xvfb occasionally is not ready for the first client: one retry
        proc = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1920x1200x24", "krita", "--nosplash"], env=env,
                              capture_output=True, text=True, timeout=600)
        log = proc.stdout + proc.stderr
        if (out / "result.json").exists() or "could not connect to display" not in log:
            break
    assert (out / "result.json").exists(), f"Krita wrote no result; its log ends:\n{log[-3000:]}"
    result = json.loads((out / "result.json").read_text())
    assert result["ok"], result.get("error", "") + "\n" + log[-3000:]
    return result, out / "e2e.kra"


def check_saved_document(result: dict, kra_path: Path, source: np.ndarray, keys: dict, first: int, last: int,
                         tmp_path: Path) -> dict:
    kra = Kra(kra_path)
    assert (kra.width, kra.height) == (3840, 2160) and kra.fps == 24
    assert result["source_hash_before"] == result["source_hash_after"]   # as Krita saw it
    assert result["menu_action"]                                         # the plugin's menu action exists
    src_layer = kra.layer(result["source_layer"])
    assert "keyframes" not in src_layer                                   # the source layer is not animated
    bgra = [2, 1, 0, 3]
    px = 8 if source.dtype == np.uint16 else 4
    stored_source = kra.pixels(src_layer["filename"])
    assert stored_source.shape[2] == px
    assert np.array_equal(stored_source.view(source.dtype)[..., bgra], source)  # and as saved: unchanged

    new = kra.layer(result["layer"])
    assert new["nodetype"] == "paintlayer" and new["colorspacename"] == src_layer["colorspacename"]
    frames = kra.keyframes(new)
    assert sorted(t for t in frames if t >= first) == list(range(first, last + 1))  # one keyframe per frame
    assert all(t == 0 for t in frames if t < first)                      # (Krita's empty keyframe at 0)

    # keys and settings travel in the document; the scene they describe, rendered here, is what Krita holds
    scene, settings = adapter.state_from_bytes(kra.annotation(adapter.ANNOTATION))
    assert scene.face_box == tuple(BOX) and settings.box_from == "selection"
    assert {c: [[k.frame, k.value] for k in scene.timeline.track(c).keys] for c in keys} == keys
    assert result["reopened_keys"] == keys and result["reopened_box"] == BOX  # restored on reopen
    scene.frame_range = (first, last)
    scene.output.bit_depth = 16 if source.dtype == np.uint16 else 8  # the docker renders at the layer's depth
    # the docker renders with the model's own batch size, as here (a frame's last bit depends on its batch)
    expected = render_scene(scene, tmp_path / "expected", source=source)
    decoded = {}
    for t, path in zip(range(first, last + 1), expected, strict=True):
        x0, y0, x1, y1 = kra.extent(frames[t])
        assert x0 >= 0 and y0 >= 0 and x1 <= 3840 + 63 and y1 <= 2160 + 63   # inside the document's tiles
        frame = kra.pixels(frames[t]).view(source.dtype)[..., bgra]
        assert np.array_equal(frame, read_image(path)), f"frame {t} differs from keyface's render"
        decoded[t] = frame
    assert np.array_equal(decoded[first], source)   # the rest pose at the first key: the painting itself
    return decoded


def _changes(a: np.ndarray, b: np.ndarray) -> tuple[bool, bool]:
    """(differs inside the model's region, differs outside it)."""
    x, y, w, h = REGION
    inside = np.zeros(a.shape[:2], bool)
    inside[y:y + h, x:x + w] = True
    diff = (a != b).any(axis=2)
    return bool(diff[inside].any()), bool(diff[~inside].any())


def test_render_into_a_new_animated_layer_u8(tmp_path):
    keys = {"AU45": [[2, 0.0], [5, 5.0], [8, 0.0]], "AU26": [[4, 0.0], [6, 4.0], [8, 0.0]]}
    result, kra = run_krita(tmp_path, "U8", keys)
    source = read_image(EXAMPLE / "character.png")
    frames = check_saved_document(result, kra, source, keys, 2, 8, tmp_path)
    assert _changes(frames[5], frames[2]) == (True, False)   # the blink key changes the face, nothing else
    assert _changes(frames[6], frames[5]) == (True, False)   # mouth opening on its own keys
    assert np.array_equal(frames[8], frames[2])              # back to rest at the last keys


def test_render_into_a_new_animated_layer_u16(tmp_path):
    # The first render's worker raises (injected): the docker shows the error, Krita stays up, and the same docker
    # renders the layer on the second press.
    keys = {"AU12": [[1, 0.0], [2, 5.0], [3, 0.0]]}
    result, kra = run_krita(tmp_path, "U16", keys, inject_failure=True)
    injected = result["injected"]
    assert injected["message"] == "render failed: injected fault" and injected["shown"] == injected["message"]
    assert injected["is_error"] and not injected["rendering_after"] and injected["button_enabled"]
    source = read_image(EXAMPLE / "character.png").astype(np.uint16) * 257
    frames = check_saved_document(result, kra, source, keys, 1, 3, tmp_path)
    assert _changes(frames[2], frames[1]) == (True, False)

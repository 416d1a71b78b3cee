"""The Blender add-on end to end with the real ``bpy`` wheel (Blender 4.5 as a Python module), run in subprocesses
(``tests/blender_e2e/driver.py``): `keyface blender install` into a throw-away scripts folder, the add-on enabled
from there, the bundled 3840×2160 RGBA example loaded as an Image, keys on two parameters with different
interpolations, the render operator run headless, the .blend saved and reopened, export → import.

Skipped where ``bpy`` cannot be imported (install it with ``pip install --no-deps 'bpy==4.5.*'``: the wheel declares
numpy<2 but runs with keyface's numpy 2; ``.ci/run`` installs it)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "blender_e2e" / "driver.py"
EXAMPLE = ROOT / "core" / "data" / "example" / "character.png"
CHANNELS = ["AU45", "AU26"]
FRAMES = (1, 7)
KEYS = {  # frame, value, Blender interpolation, easing
    "AU45": [[1, 0.0, "BEZIER", "AUTO"], [3, 2.0, "BEZIER", "AUTO"], [5, 5.0, "LINEAR", "AUTO"],
             [7, 0.0, "BEZIER", "AUTO"]],
    "AU26": [[1, 0.0, "QUAD", "EASE_OUT"], [4, 4.0, "SINE", "EASE_IN_OUT"], [6, 1.0, "CONSTANT", "AUTO"]],
}
FACE_BOX = [1650, 270, 540, 540]
MODEL = "atw-au17"

needs_bpy = pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                               reason="bpy (Blender as a Python module) is not installed")


def _run(phase, work, scripts):
    env = dict(os.environ, BLENDER_USER_SCRIPTS=str(scripts))
    proc = subprocess.run([sys.executable, str(DRIVER), phase, str(work)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"driver {phase} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return json.loads((work / f"{phase}.json").read_text())


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    if importlib.util.find_spec("bpy") is None:
        pytest.skip("bpy (Blender as a Python module) is not installed")
    from keyface.core.cli import main

    work = tmp_path_factory.mktemp("blender")
    scripts = work / "scripts"
    assert main(["blender", "install", "--scripts", str(scripts)]) == 0
    (work / "config.json").write_text(json.dumps({"image": str(EXAMPLE), "model": MODEL, "face_box": FACE_BOX,
                                                  "frames": FRAMES, "keys": KEYS, "channels": CHANNELS}))
    rendered = _run("render", work, scripts)
    reopened = _run("reopen", work, scripts)
    return work, scripts, rendered, reopened


@needs_bpy
def test_render_operator_writes_keyface_frames_of_blenders_values(e2e):
    from keyface.core.cli import main
    from keyface.core.imageio import read_image
    from keyface.core.pipeline import FrameJob, frame_name

    work, _, r, _ = e2e
    assert r["render"] == ["FINISHED"]
    assert "no image" in r["no_image_error"]
    assert "save the .blend first" in r["unsaved_error"]
    folder = Path(r["folder"])
    assert folder == work / "anim_keyface" / "Scene"
    source = read_image(EXAMPLE)
    frames = list(range(FRAMES[0], FRAMES[1] + 1))
    values = np.array(r["values"], np.float64)  # what Blender's animation system set at each frame
    # Blender's own interpolation: a SINE ease-in-out segment (no keyface equivalent) and its quadratic ease-out
    assert values[2, 1] == pytest.approx(4 * (1 - (1 - 2 / 3) ** 2), abs=1e-5)  # AU26 at frame 3: QUAD ease-out
    assert values[4, 1] == pytest.approx(4 + (1 - 4) * 0.5 * (1 - np.cos(np.pi * 0.5)), abs=1e-5)  # SINE at 5
    assert values[5, 0] == pytest.approx(2.5, abs=1e-5)  # AU45 linear from 5 at frame 5 to 0 at 7
    assert values[6, 1] == 1.0  # AU26 from its constant key at 6 on
    # keyface's own render (the CLI) of a scene file holding exactly those values, a constant key per frame
    doc = {"keyface_scene": 1, "source": str(EXAMPLE), "schema": "au17", "model": MODEL, "face_box": FACE_BOX,
           "frame_range": list(FRAMES),
           "tracks": {c: {"keys": [{"frame": f, "value": float(v), "interpolation": "constant"}
                                   for f, v in zip(frames, values[:, j], strict=True)]}
                      for j, c in enumerate(CHANNELS)}}
    (work / "values.json").write_text(json.dumps(doc))
    assert main(["render", str(work / "values.json"), "--out", str(work / "keyface_frames")]) == 0
    expected = [read_image(work / "keyface_frames" / frame_name(f, "png")) for f in frames]
    job = FrameJob.prepare(source, MODEL, FACE_BOX)
    x, y, w, h = job.box
    outside = np.ones(source.shape[:2], bool)
    outside[max(y, 0):y + h, max(x, 0):x + w] = False
    changed = 0
    for f, want in zip(frames, expected, strict=True):
        got = read_image(folder / frame_name(f, "png"))
        assert got.shape == source.shape == (2160, 3840, 4)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want, err_msg=f"frame {f}")
        np.testing.assert_array_equal(got[outside], source[outside])
        changed += int(np.any(got != source))
    assert changed >= len(frames) - 1  # frame 1 is the rest pose (the source itself); the others move


@needs_bpy
def test_frames_are_loaded_in_the_scene_and_a_second_render_resumes(e2e):
    work, _, r, _ = e2e
    frames = list(range(FRAMES[0], FRAMES[1] + 1))
    (strip,) = r["strips"]
    assert strip["type"] == "IMAGE"
    assert (strip["start"], strip["end"]) == (FRAMES[0], FRAMES[1] + 1)
    assert strip["elements"] == [f"frame_{f:05d}.png" for f in frames]
    assert Path(strip["directory"]).resolve() == Path(r["folder"]).resolve()
    assert r["image_sequence"]["source"] == "SEQUENCE"
    assert Path(r["image_sequence"]["path"]).name == "frame_00001.png"
    assert r["render_again"] == ["FINISHED"]
    assert r["mtimes_again"] == r["mtimes"] and len(r["mtimes"]) == len(frames)
    assert r["preview"] == ["FINISHED"] and r["preview_size"] == [3840, 2160]


@needs_bpy
def test_reopened_blend_keeps_keys_and_settings(e2e):
    _, _, r, o = e2e
    assert o["keys"] == r["keys"]
    assert set(o["keys"]) == {f"keyface_au17.{c}" for c in CHANNELS}
    assert [k[2] for k in o["keys"]["keyface_au17.AU26"]] == ["QUAD", "SINE", "CONSTANT"]
    assert o["settings"] == r["settings"]
    assert o["settings"]["model"] == MODEL and o["settings"]["box"] == FACE_BOX
    np.testing.assert_array_equal(o["values"], r["values"])


@needs_bpy
def test_export_import_round_trip(e2e):
    from keyface.core.scene import load_scene

    work, _, r, o = e2e
    exported = load_scene(work / "exported.json")
    assert exported.model == MODEL and list(exported.face_box) == FACE_BOX
    assert exported.frame_range == FRAMES
    assert exported.source_path == EXAMPLE.resolve()
    frames = list(range(FRAMES[0], FRAMES[1] + 1))
    # keyface samples the exported file to Blender's values at every frame
    sampled = exported.timeline.sample(frames)[:, [exported.schema.index(c) for c in CHANNELS]]
    np.testing.assert_allclose(sampled, r["values"], atol=2e-5)
    kinds = {c: [k.interpolation for k in exported.timeline.tracks[c].keys] for c in CHANNELS}
    assert kinds["AU45"][:3] == ["bezier", "bezier", "linear"]
    assert kinds["AU26"][0] == "ease_out" and kinds["AU26"][-1] == "constant"  # SINE in between: baked per frame
    assert [k.frame for k in exported.timeline.tracks["AU26"].keys] == [1, 4, 5, 6]
    # imported into a new Blender scene, the F-curves evaluate to the same values, and export the same file
    assert o["import"] == ["FINISHED"]
    np.testing.assert_allclose(o["import_values"], r["values"], atol=2e-5)
    assert o["import_settings"]["model"] == MODEL and o["import_settings"]["box"] == FACE_BOX
    again = load_scene(work / "exported_again.json")
    assert again.to_json()["tracks"].keys() == exported.to_json()["tracks"].keys()
    for c in CHANNELS:
        a, b = again.timeline.tracks[c].keys, exported.timeline.tracks[c].keys
        assert [(k.frame, k.interpolation) for k in a] == [(k.frame, k.interpolation) for k in b]
        np.testing.assert_allclose([k.value for k in a], [k.value for k in b], atol=1e-6)


def test_install_and_uninstall_write_and_remove_exactly_the_add_on(tmp_path):
    from keyface.addon.blender import install
    from keyface.core.cli import main
    from keyface.core.errors import KeyfaceError

    scripts = tmp_path / "scripts"
    (scripts / "addons" / "other").mkdir(parents=True)
    assert main(["blender", "install", "--scripts", str(scripts)]) == 0
    shim = scripts / "addons" / "keyface_blender" / "__init__.py"
    env = json.loads((shim.parent / "environment.json").read_text())
    assert env["python"] == list(sys.version_info[:2]) and env["executable"] == sys.executable
    assert "bl_info" in shim.read_text() and (scripts / "startup" / install.ENABLER).is_file()
    compile(shim.read_text(), str(shim), "exec")
    compile((scripts / "startup" / install.ENABLER).read_text(), "enable", "exec")
    assert main(["blender", "install", "--scripts", str(scripts)]) == 0  # again: overwrites its own files
    assert main(["blender", "uninstall", "--scripts", str(scripts)]) == 0
    assert not (scripts / "addons" / "keyface_blender").exists()
    assert not (scripts / "startup" / install.ENABLER).exists()
    assert (scripts / "addons" / "other").is_dir()
    foreign = scripts / "addons" / "keyface_blender"
    foreign.mkdir()
    (foreign / "__init__.py").write_text("# someone else's\n")
    with pytest.raises(KeyfaceError, match="not written by keyface"):
        install.install(scripts)
    with pytest.raises(KeyfaceError, match="not written by keyface"):
        install.uninstall(scripts)

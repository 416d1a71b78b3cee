import json
import subprocess
import sys

import numpy as np
import pytest

from keyface.core import rig
from keyface.core.cli import main
from keyface.core.scene import load_scene


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_schemas(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "Generators:" in out
    for name in rig.schema_names():
        assert f"  {name} " in out


def test_models_schema_channels(capsys):
    code, out, _ = run(capsys, "models", "--schema", "tha45")
    assert code == 0
    lines = [line for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [line.split()[1] for line in lines] == list(rig.get_schema("tha45").names)
    assert "character rig → tha45 loses:" in out and "iris_size" in out


def test_models_json(capsys):
    code, out, _ = run(capsys, "models", "--json", "--schema", "au17")
    doc = json.loads(out)
    assert code == 0 and [c["name"] for c in doc["schemas"][0]["channels"]] == list(rig.get_schema("au17").names)
    assert doc["schemas"][0]["network_divisor"] == 5


def test_models_unknown_schema(capsys):
    code, _, err = run(capsys, "models", "--schema", "pose6")
    assert code == 2 and "unknown schema 'pose6'; did you mean pose5?" in err


def test_scene_check_prints_samples(capsys, scene_doc, write_scene):
    path = write_scene(scene_doc)
    code, out, _ = run(capsys, "scene", "check", str(path), "--frames", "0:12")
    assert code == 0 and ": OK" in out and "64×48" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == [str(f) for f in range(13)]
    assert rows[6][1:] == ["2.500", "5.000"]  # AU12 linear midpoint, AU45 constant until frame 6 then 5


def test_scene_check_json_matches_timeline(capsys, scene_doc, write_scene):
    path = write_scene(scene_doc)
    code, out, _ = run(capsys, "scene", "check", str(path), "--step", "0.5", "--channels", "AU12,AU01", "--json")
    doc = json.loads(out)
    scene = load_scene(path)
    frames = np.arange(0, 24.25, 0.5)
    assert code == 0 and doc["frames"] == frames.tolist()
    np.testing.assert_array_equal(doc["values"]["AU12"], scene.sample(frames)[:, scene.schema.index("AU12")])
    assert set(doc["values"]) == {"AU12", "AU01"}


def test_scene_check_errors(capsys, scene_doc, write_scene):
    scene_doc["tracks"]["AU12"]["keys"][1]["frame"] = 1.25
    code, out, err = run(capsys, "scene", "check", str(write_scene(scene_doc)))
    assert code == 2 and out == "" and "tracks.AU12.keys[1].frame: expected an integer, got 1.25" in err
    code, _, err = run(capsys, "scene", "check", "/nonexistent/scene.json")
    assert code == 2 and "scene file not found" in err


@pytest.mark.parametrize("frames", ["5", "9:3", "a:b"])
def test_scene_check_bad_frames(capsys, scene_doc, write_scene, frames):
    with pytest.raises(SystemExit) as info:
        main(["scene", "check", str(write_scene(scene_doc)), "--frames", frames])
    assert info.value.code == 2


def test_scene_check_overshoot_warning(capsys, scene_doc, write_scene):
    scene_doc["tracks"]["AU12"]["keys"][0] = {"frame": 0, "value": 4, "handles": {"right": [4, 8]}}
    code, out, _ = run(capsys, "scene", "check", str(write_scene(scene_doc)))
    assert code == 0 and "warning: AU12's curve goes past its range" in out
    code, out, _ = run(capsys, "scene", "check", str(write_scene(scene_doc)), "--json")
    assert code == 0 and [w.split("'")[0] for w in json.loads(out)["warnings"]] == ["AU12"]


def test_console_script_and_bin(scene_doc, write_scene):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    exe = Path(sys.executable).parent / "keyface"
    for cmd in ([str(exe)], [sys.executable, str(root / "bin" / "keyface")]):
        done = subprocess.run([*cmd, "scene", "check", str(write_scene(scene_doc)), "--json"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["frames"][:2] == [0, 1] and set(doc["values"]) == {"AU12", "AU45"} and doc["warnings"] == []
        bad = subprocess.run([*cmd, "models", "--schema", "nope"], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and bad.stderr.startswith("keyface: error: unknown schema")

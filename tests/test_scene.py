import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyface.core import rig
from keyface.core.errors import SceneError
from keyface.core.scene import check_source, load_scene, save_scene, scene_from_json
from keyface.core.timeline import INTERPOLATIONS


def test_load_valid_scene(scene_doc, write_scene, image_file):
    scene = load_scene(write_scene(scene_doc))
    assert scene.schema.name == "au17" and scene.fps == 24 and scene.frame_range == (0, 24)
    assert scene.source_path == image_file.resolve() and scene.output_dir == image_file.parent.resolve() / "frames"
    assert scene.face_box == (8, 4, 32, 32) and len(scene.frames) == 25
    values = scene.sample()
    assert values.shape == (25, 17)
    au12 = scene.schema.index("AU12")
    np.testing.assert_allclose(values[[0, 6, 12], au12], [0, 2.5, 5])  # linear first segment
    assert check_source(scene) == (64, 48)


def test_round_trip(scene_doc, write_scene, tmp_path):
    scene_doc["tracks"]["AU12"]["keys"][2]["handles"] = {"left": [-3, 0.5]}
    scene = load_scene(write_scene(scene_doc))
    out = tmp_path / "copy.json"
    save_scene(scene, out)
    again = load_scene(out)
    assert again.to_json() == scene.to_json()
    np.testing.assert_array_equal(again.sample(np.linspace(-2, 30, 97)), scene.sample(np.linspace(-2, 30, 97)))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_defaults_and_character_schema(image_file, write_scene):
    doc = {"keyface_scene": 1, "source": image_file.name, "schema": "character",
           "tracks": {"blink_left": {"keys": [{"frame": 5, "value": 1}, {"frame": 9, "value": 0}]}}}
    scene = load_scene(write_scene(doc))
    assert scene.frame_range == (5, 9) and scene.output.format == "png" and scene.output.reswarp == "multiscale"
    assert scene.timeline.tracks["blink_left"].keys[0].interpolation == "bezier"


BAD = [
    (lambda d: d["tracks"]["AU12"]["keys"].append({"frame": 3.5, "value": 1}),
     "tracks.AU12.keys[3].frame: expected an integer, got 3.5"),
    (lambda d: d["tracks"]["AU12"]["keys"].append({"frame": 30, "value": 9}),
     "tracks.AU12.keys[3].value: 9 is outside AU12's range [0, 5]"),
    (lambda d: d["tracks"]["AU12"]["keys"].append({"frame": 12, "value": 1}),
     "tracks.AU12.keys[3].frame: a key at frame 12 already exists (tracks.AU12.keys[1])"),
    (lambda d: d["tracks"]["AU12"]["keys"][0].update(interpolation="cubic"),
     "tracks.AU12.keys[0].interpolation: expected one of constant, linear, bezier"),
    (lambda d: d["tracks"]["AU12"]["keys"][0].update(handles={"left": [2, 0]}),
     "tracks.AU12.keys[0].handles.left[0]: the left handle must point back in time"),
    (lambda d: d["tracks"]["AU12"]["keys"][0].update(handles={"right": [2]}),
     "tracks.AU12.keys[0].handles.right: expected [dframe, dvalue]"),
    (lambda d: d["tracks"]["AU12"]["keys"][1].pop("value"), "tracks.AU12.keys[1].value: missing"),
    (lambda d: d["tracks"]["AU12"]["keys"][1].update(valeu=2),
     "tracks.AU12.keys[1].valeu: unknown field (did you mean value?)"),
    (lambda d: d["tracks"]["AU12"].update(keys={}), "tracks.AU12.keys: expected a list of keys, got an object"),
    (lambda d: d["tracks"].update(AU13={"keys": []}),
     "tracks.AU13: unknown channel 'AU13' for schema au17; did you mean"),
    (lambda d: d.update(tracks=[]), "tracks: expected an object of channel tracks, got a list"),
    (lambda d: d.update(keyface_scene=2), "keyface_scene: unsupported scene version 2"),
    (lambda d: d.pop("keyface_scene"), "keyface_scene: missing"),
    (lambda d: d.pop("source"), "source: missing"),
    (lambda d: d.update(source=""), "source: expected a non-empty string"),
    (lambda d: d.update(fsp=30), "fsp: unknown field (did you mean fps?)"),
    (lambda d: d.update(fps=0), "fps: must be in (0, 1000], got 0"),
    (lambda d: d.update(fps="24"), 'fps: expected a number, got "24"'),
    (lambda d: d.update(schema="au18"), "schema: unknown schema 'au18'; did you mean au17?"),
    (lambda d: d.pop("schema"), "schema: missing"),
    (lambda d: d.update(model="atw-nope"), "model: unknown model 'atw-nope' (installed: "),
    (lambda d: d.update(face_box=[1, 2, 3]), "face_box: expected a list of 4 integers"),
    (lambda d: d.update(face_box=[1, 2, 0, 4]), "face_box: width and height must be ≥ 1"),
    (lambda d: d.update(face_box=[-1, 2, 3, 4]), "face_box[0]: must be ≥ 0, got -1"),
    (lambda d: d.update(frame_range=[10, 2]), "frame_range: last frame 2 is before first frame 10"),
    (lambda d: d["output"].update(format="avi"), "output.format: expected one of png, tiff, exr, mp4, mov, webm, gif"),
    (lambda d: d["output"].update(format="mp4", quality=80), "output.quality: quality for mp4 must be an H.264 CRF"),
    (lambda d: d["output"].update(quality=20), "output.quality: quality is a movie setting; png frames have none"),
    (lambda d: d["output"].update(background=[0, 0, 300]), "output.background: an sRGB colour of 0–255 values"),
    (lambda d: d["output"].update(bit_depth=32), "output.bit_depth: png supports bit depths 8, 16, got 32"),
    (lambda d: d["output"].update(size=[0, 10]), "output.size[0]: must be ≥ 1, got 0"),
    (lambda d: d["output"].update(reswarp="fancy"), "output.reswarp: expected one of multiscale, vanilla"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD, ids=[m for _, m in BAD])
def test_malformed_scenes(scene_doc, write_scene, mutate, message):
    doc = copy.deepcopy(scene_doc)
    mutate(doc)
    with pytest.raises(SceneError) as info:
        load_scene(write_scene(doc))
    assert message in str(info.value)


def test_all_problems_reported_at_once(scene_doc, write_scene):
    scene_doc["fps"] = -1
    scene_doc["tracks"]["AU12"]["keys"][0]["frame"] = "zero"
    scene_doc["tracks"]["AU45"]["keys"][1]["value"] = 6
    with pytest.raises(SceneError) as info:
        load_scene(write_scene(scene_doc))
    paths = [p for p, _ in info.value.errors]
    assert paths == ["fps", "tracks.AU12.keys[0].frame", "tracks.AU45.keys[1].value"]
    assert str(info.value).count("\n") == 3


@pytest.mark.parametrize(("text", "message"), [
    ('{"keyface_scene": 1,', "not valid JSON: Expecting property name enclosed in double quotes at line 1"),
    ('{"keyface_scene": 1, "source": "a.png", "schema": "au17", "tracks": {"AU12": {"keys": '
     '[{"frame": 0, "value": NaN}]}}}', "NaN is not a number in JSON"),
    ("[1, 2]", "expected an object, got a list"),
])
def test_unparseable(write_scene, text, message):
    with pytest.raises(SceneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_scene(write_scene(text))


def test_missing_scene_file(tmp_path):
    with pytest.raises(SceneError, match="scene file not found"):
        load_scene(tmp_path / "nope.json")


def test_check_source_problems(scene_doc, write_scene, image_file):
    scene_doc["face_box"] = [40, 20, 32, 32]
    with pytest.raises(SceneError, match=r"face_box: box \[40, 20, 32, 32\] does not fit the 64×48 source"):
        check_source(load_scene(write_scene(scene_doc)))
    image_file.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(SceneError, match="source: cannot read image"):
        check_source(load_scene(write_scene(scene_doc)))
    scene_doc["source"] = "missing.png"
    with pytest.raises(SceneError, match="source: image not found"):
        check_source(load_scene(write_scene(scene_doc)))


key = st.fixed_dictionaries(
    {"value": st.floats(0, 5, allow_nan=False), "interpolation": st.sampled_from(INTERPOLATIONS)},
    optional={"handles": st.fixed_dictionaries({}, optional={
        "left": st.tuples(st.floats(-20, 0), st.floats(-5, 5)).map(list),
        "right": st.tuples(st.floats(0, 20), st.floats(-5, 5)).map(list)})},
)
tracks = st.dictionaries(
    st.sampled_from(rig.get_schema("au17").names),
    st.dictionaries(st.integers(-100, 1000), key, min_size=1, max_size=6).map(
        lambda keys: {"keys": [dict(frame=f, **k) for f, k in keys.items()]}),
    max_size=5,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tracks, st.floats(1, 120), st.one_of(st.none(), st.tuples(st.integers(0, 9), st.integers(0, 9),
                                                                   st.integers(1, 9), st.integers(1, 9))))
def test_scene_round_trip_property(tmp_path, tracks, fps, box):
    doc = {"keyface_scene": 1, "source": "x.png", "schema": "au17", "fps": fps, "tracks": tracks,
           "face_box": list(box) if box else None}
    scene = scene_from_json(json.loads(json.dumps(doc)), tmp_path)
    path = tmp_path / "s.json"
    save_scene(scene, path)
    again = load_scene(path)
    assert again.to_json() == scene.to_json()
    for name, t in tracks.items():
        assert [k["frame"] for k in again.to_json()["tracks"][name]["keys"]] == sorted(k["frame"] for k in t["keys"])
    frames = np.linspace(-120, 1020, 57)
    np.testing.assert_array_equal(again.sample(frames), scene.sample(frames))


def test_movie_output_settings_round_trip(scene_doc, write_scene, tmp_path):
    scene_doc["output"].update(format="mov", bit_depth=16, quality="4444xq", background=[10, 20, 30])
    scene = load_scene(write_scene(scene_doc))
    assert (scene.output.format, scene.output.bit_depth, scene.output.quality) == ("mov", 16, "4444xq")
    save_scene(scene, tmp_path / "again.json")
    again = load_scene(tmp_path / "again.json")
    assert again.output == scene.output and again.output.background == (10, 20, 30)


def test_readme_example_scene_loads(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "scene.json"
    path.write_text(block)
    scene = load_scene(path)
    assert scene.schema.name == "au17" and scene.frame_range == (0, 47)
    assert scene.timeline.sample_dict(6)["AU45"] == 5


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=JSON)
def test_fuzz_random_json_is_a_scene_error_or_a_scene(doc, image_file):
    from keyface.core.errors import KeyfaceError

    try:
        scene_from_json(doc, image_file.parent, "fuzz")
    except KeyfaceError:
        pass


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.sampled_from(["output", "tracks", "AU12", "keys", 0, 1, "frame", "value", "handles",
                                      "face_box", "frame_range", "fps", "schema", "model", "interpolation"]),
                     min_size=1, max_size=4),
       value=JSON)
def test_fuzz_mutated_valid_scenes_are_a_scene_error_or_a_scene(scene_doc, image_file, path, value):
    # Mutations of a valid scene at random places: loading gives a scene or a KeyfaceError, never another exception.
    from keyface.core.errors import KeyfaceError

    doc = copy.deepcopy(scene_doc)
    node = doc
    for key in path[:-1]:
        try:
            node = node[str(key) if isinstance(node, dict) else key]
        except (KeyError, IndexError, TypeError):
            break
    key = path[-1]
    if isinstance(node, dict):
        node[str(key)] = value  # JSON object keys are strings
    elif isinstance(node, list) and isinstance(key, int) and key < len(node):
        node[key] = value
    else:
        return
    try:
        scene = scene_from_json(doc, image_file.parent, "fuzz")
    except KeyfaceError:
        return
    scene.sample([0, 1.5, 24])

"""The Blender add-on's logic without Blender (keyface.addon.blender.bridge): keyface ⇄ Blender keyframes, the
resumable frames folder, the background render task."""

import json

import numpy as np
import pytest

from keyface.addon.blender import bridge
from keyface.core.timeline import Key, Track


def blender_eval(bkeys, f):
    """Blender's evaluation of the key kinds keyface maps to (CONSTANT, LINEAR, QUAD in/out, BEZIER via its cubic)."""
    if f <= bkeys[0].frame:
        return bkeys[0].value
    if f >= bkeys[-1].frame:
        return bkeys[-1].value
    i = max(j for j, k in enumerate(bkeys) if k.frame <= f)
    a, b = bkeys[i], bkeys[i + 1]
    t = (f - a.frame) / (b.frame - a.frame)
    d = b.value - a.value
    if a.interpolation == "CONSTANT":
        return a.value
    if a.interpolation == "LINEAR":
        return a.value + d * t
    if a.interpolation == "QUAD":
        return a.value + d * (t * t if a.easing in ("EASE_IN", "AUTO") else 1 - (1 - t) ** 2)
    assert a.interpolation == "BEZIER"
    px = [a.frame, a.handle_right[0], b.handle_left[0], b.frame]
    py = [a.value, a.handle_right[1], b.handle_left[1], b.value]
    lo, hi = 0.0, 1.0
    for _ in range(60):
        u = (lo + hi) / 2
        x = (1 - u) ** 3 * px[0] + 3 * (1 - u) ** 2 * u * px[1] + 3 * (1 - u) * u * u * px[2] + u ** 3 * px[3]
        lo, hi = (u, hi) if x < f else (lo, u)
    u = (lo + hi) / 2
    return (1 - u) ** 3 * py[0] + 3 * (1 - u) ** 2 * u * py[1] + 3 * (1 - u) * u * u * py[2] + u ** 3 * py[3]


TRACK = Track([Key(0, 0.0, "ease_in_out"), Key(4, 3.0, "bezier"), Key(9, 4.0, "linear"), Key(12, 3.0, "ease_in"),
               Key(15, 1.0, "ease_out"), Key(18, 4.0, "bezier", handle_right=(2.0, 3.0)),
               Key(22, 0.5, "constant"), Key(25, 2.5, "bezier")])


def test_every_keyface_interpolation_maps_to_blender_keys_that_evaluate_the_same():
    bkeys = bridge.track_to_bkeys(TRACK)
    assert [(b.interpolation, b.easing) for b in bkeys][:6] == [
        ("BEZIER", "AUTO"), ("BEZIER", "AUTO"), ("LINEAR", "AUTO"), ("QUAD", "EASE_IN"), ("QUAD", "EASE_OUT"),
        ("BEZIER", "AUTO")]
    frames = np.arange(-2, 28, 0.25)
    ours = [blender_eval(bkeys, f) for f in frames]
    np.testing.assert_allclose(ours, TRACK.sample(frames), atol=1e-9)


def test_blender_keys_come_back_with_their_interpolation():
    bkeys = bridge.track_to_bkeys(TRACK)
    back = bridge.bkeys_to_track(bkeys, lambda f: blender_eval(bkeys, f), 0, 5)
    assert [(k.frame, k.interpolation) for k in back.keys] == [(k.frame, k.interpolation) for k in TRACK.keys]
    frames = np.arange(-2, 28, 0.5)
    np.testing.assert_allclose(back.sample(frames), TRACK.sample(frames), atol=1e-9)


def test_segments_keyface_cannot_express_are_baked_per_frame():
    bkeys = [bridge.BKey(1, 0.0, "LINEAR"), bridge.BKey(5, 4.0, "ELASTIC", "EASE_OUT"), bridge.BKey(8.5, 1.0, "LINEAR"),
             bridge.BKey(10, 9.0, "CONSTANT")]  # a key at a fractional frame, one above the range [0, 5]

    def blender(f):  # any curve: the baked keys must hit it at integer frames
        return float(np.clip(np.sin(f) * 2 + 2, 0, 5)) if 5 < f < 10 else [k.value for k in bkeys if k.frame <= f][-1]

    track = bridge.bkeys_to_track(bkeys, blender, 0, 5)
    assert [k.frame for k in track.keys] == [1, 5, 6, 7, 8, 9, 10]
    assert track.keys[0].interpolation == "linear"
    assert all(k.interpolation == "linear" for k in track.keys[1:6])
    for f in range(5, 10):
        assert track.sample([f])[0] == pytest.approx(min(blender(f), 5))
    assert track.keys[-1].value == 5  # clipped to the channel's range, as Blender's property is


def test_bezier_handles_longer_than_the_segment_are_corrected_as_blender_does():
    a = bridge.BKey(0, 0.0, "BEZIER", handle_right=(6.0, 3.0))
    b = bridge.BKey(4, 1.0, "BEZIER", handle_left=(2.0, 1.0))
    track = bridge.bkeys_to_track([a, b], lambda f: 0, 0, 5)
    (right, left) = track.keys[0].handle_right, track.keys[1].handle_left
    assert right[0] - left[0] == pytest.approx(4)  # shrunk together to the segment, as Blender evaluates them
    assert right == pytest.approx((3.0, 1.5)) and left == pytest.approx((-1.0, 0.0))


def test_values_scene_gives_exactly_the_values(tmp_path):
    from keyface.core.rig import get_schema

    schema = get_schema("au17")
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 5, (6, len(schema))).astype(np.float32).astype(np.float64)
    values[:, 3] = 0  # a channel at its default everywhere needs no track
    scene = bridge.values_scene(schema, "atw-au17", (1, 2, 30, 30), list(range(3, 9)), values, 24)
    np.testing.assert_array_equal(scene.sample(), values)
    assert schema.names[3] not in scene.timeline.tracks
    assert scene.frame_range == (3, 8)


def test_prepare_folder_keeps_matching_frames_and_deletes_stale_ones(tmp_path):
    folder = tmp_path / "frames"
    setup = {"source": "abc", "model": "m"}
    values = np.array([[0.0, 1.0], [0.5, 1.0], [1.0, 1.0]])
    assert bridge.prepare_folder(folder, setup, [1, 2, 3], values) == [1, 2, 3]
    for f in (1, 2, 3):
        (folder / f"frame_{f:05d}.png").write_bytes(b"x")
    (folder / "notes.txt").write_text("mine")
    assert bridge.prepare_folder(folder, setup, [1, 2, 3], values) == []  # all kept: a render resumes
    changed = values.copy()
    changed[1, 0] = 0.75
    assert bridge.prepare_folder(folder, setup, [1, 2, 3], changed) == [2]  # only the changed frame again
    (folder / "frame_00002.png").write_bytes(b"x")
    assert bridge.prepare_folder(folder, {**setup, "model": "other"}, [1, 2, 3], changed) == [1, 2, 3]
    assert (folder / "notes.txt").read_text() == "mine"  # only keyface's frame files are removed
    record = json.loads((folder / bridge.MANIFEST).read_text())
    assert record["setup"]["model"] == "other" and set(record["frames"]) == {"1", "2", "3"}


def test_render_task_runs_in_the_background_cancels_and_resumes(tmp_path, monkeypatch):
    import threading

    from keyface.core import pipeline
    from keyface.core.errors import KeyfaceError

    gate = threading.Event()
    calls = []

    def fake_render(scene, out, frames, fmt, device, resume, progress, should_stop, source):
        calls.append(list(frames))
        for i, f in enumerate(frames):
            gate.wait(5)
            if should_stop():
                return []
            (out / f"frame_{f:05d}.png").write_bytes(b"x")
            progress(i + 1, len(frames))
        return []

    monkeypatch.setattr(pipeline, "render_scene", fake_render)
    (tmp_path / "f").mkdir()
    task = bridge.RenderTask(None, tmp_path / "f", [1, 2, 3], np.zeros((4, 4, 4), np.uint8)).start()
    assert task.running and task.done == 0
    task.cancel()
    gate.set()
    assert task.wait(5) and task.cancelled and task.error is None and task.done == 0
    task = bridge.RenderTask(None, tmp_path / "f", [1, 2, 3], np.zeros((4, 4, 4), np.uint8)).start()
    assert task.wait(5) and task.done == task.total == 3 and all(p.exists() for p in task.files())

    def failing(*args, **kwargs):
        raise KeyfaceError("weights missing")

    monkeypatch.setattr(pipeline, "render_scene", failing)
    task = bridge.RenderTask(None, tmp_path / "f", [1], np.zeros((4, 4, 4), np.uint8)).start()
    assert task.wait(5) and isinstance(task.error, KeyfaceError)  # kept for the UI to report, never raised


def test_group_names_are_valid_identifiers():
    assert bridge.group_attr("au17") == "keyface_au17"
    assert bridge.group_attr("3dmm:12x19") == "keyface_3dmm_12x19"
    assert bridge.data_path("tha45", "eye_wink_left") == "keyface_tha45.eye_wink_left"
    assert bridge.frames_folder("/a/b/shot 1.blend", "Scene.001").as_posix() == "/a/b/shot 1_keyface/Scene.001"

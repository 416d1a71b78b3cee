"""The Krita plugin's logic against a fake libkis (tests/fake_krita.py); the real application is in
test_krita_e2e.py."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PyQt5.QtWidgets")

import fake_krita  # noqa: E402

from keyface.addon.krita import adapter, install  # noqa: E402
from keyface.addon.krita.adapter import DockerSettings  # noqa: E402
from keyface.core.cli import main  # noqa: E402
from keyface.core.errors import KeyfaceError  # noqa: E402
from keyface.core.pipeline import render_scene  # noqa: E402
from keyface.core.pixels import quantise  # noqa: E402
from keyface.core.synth.character import sample_character  # noqa: E402
from keyface.core.synth.face import Pose  # noqa: E402
from keyface.core.synth.render import REST  # noqa: E402
from keyface.core.synth.sample import PairRenderer  # noqa: E402

MODEL = "atw-au17"


@pytest.fixture(scope="module")
def app():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture(scope="module")
def character():
    pr = PairRenderer(sample_character(4), (300, 420))
    img = quantise(pr.renderer.render().image)
    return img, tuple(pr.face_box(Pose(dict(REST))))


def _wait(app, cond, timeout=120):
    end = time.monotonic() + timeout
    while not cond():
        app.processEvents()
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------------ adapter


@pytest.mark.parametrize("depth", ["U8", "U16"])
def test_pixels_round_trip_bgra(depth):
    rng = np.random.default_rng(0)
    dtype = fake_krita._DTYPES[depth]
    img = rng.integers(0, np.iinfo(dtype).max, (5, 7, 4), endpoint=True).astype(dtype)
    data = adapter.rgba_to_bgra_bytes(img)
    assert np.frombuffer(data, dtype).reshape(5, 7, 4)[2, 3, 0] == img[2, 3, 2]  # stored blue first
    assert np.array_equal(adapter.bgra_bytes_to_rgba(data, 7, 5, dtype), img)
    doc = fake_krita.Document(7, 5, depth, pixels=img.copy())
    out = adapter.read_layer(doc, doc.activeNode())
    assert out.dtype == dtype and np.array_equal(out, img)
    with pytest.raises(KeyfaceError, match="values for a 8×5"):
        adapter.bgra_bytes_to_rgba(data, 8, 5, dtype)


@pytest.mark.parametrize("model,depth,kind,message", [
    ("GRAYA", "U8", "paintlayer", "needs RGB/Alpha"),
    ("RGBA", "F32", "paintlayer", "8- and 16-bit integer"),
    ("RGBA", "U8", "vectorlayer", "animates paint layers"),
])
def test_unsupported_layers_are_refused_with_a_reason(model, depth, kind, message):
    node = fake_krita.Node("L", 4, 4, model=model, depth="U8", kind=kind)
    node._depth = depth
    with pytest.raises(KeyfaceError, match=message):
        adapter.check_layer(node)
    with pytest.raises(KeyfaceError, match="no layer"):
        adapter.check_layer(None)


def test_square_box_from_a_selection():
    assert adapter.square_box(100, 100, 50, 30, 400, 300) == (100, 90, 50, 50)   # centred, side = longer edge
    assert adapter.square_box(0, 0, 20, 60, 400, 300) == (0, 0, 60, 60)          # moved inside, not shrunk
    assert adapter.square_box(380, 280, 40, 40, 400, 300) == (360, 260, 40, 40)
    assert adapter.square_box(0, 0, 500, 500, 400, 300) == (100, 0, 300, 300)    # larger than the image
    doc = fake_krita.Document(400, 300)
    with pytest.raises(KeyfaceError, match="nothing is selected"):
        adapter.selection_box(doc)
    doc.selection_rect = (10, 20, 30, 40)
    assert adapter.selection_box(doc) == (5, 20, 40, 40)


def test_state_round_trips_and_bad_data_is_reported(app):
    from keyface.ui.document import EditorDocument

    ed = EditorDocument()
    ed.set_model(MODEL)
    ed.set_value_at("AU45", 2, 5.0)
    ed.set_value_at("AU45", 6, 0.0)
    ed.set_face_box((10, 20, 64, 64))
    data = adapter.state_to_bytes(ed, DockerSettings(layer="abc", box_from="selection", range_from="document"))
    scene, settings = adapter.state_from_bytes(data)
    assert scene.model == MODEL and scene.face_box == (10, 20, 64, 64)
    assert [(k.frame, k.value) for k in scene.timeline.track("AU45").keys] == [(2, 5.0), (6, 0.0)]
    assert settings == DockerSettings(layer="abc", box_from="selection", range_from="document")
    with pytest.raises(KeyfaceError, match="not valid JSON"):
        adapter.state_from_bytes(b"{nope")
    with pytest.raises(KeyfaceError, match="unknown version"):
        adapter.state_from_bytes(b'{"keyface_krita": 99}')
    bad = json.loads(data)
    bad["scene"]["tracks"]["AU45"]["keys"][0]["value"] = "high"
    with pytest.raises(KeyfaceError, match=r"tracks\.AU45\.keys\[0\]\.value"):
        adapter.state_from_bytes(json.dumps(bad).encode())


def test_render_range_and_its_errors(app):
    from keyface.ui.document import EditorDocument

    ed, doc = EditorDocument(), fake_krita.Document(8, 8)
    with pytest.raises(KeyfaceError, match="no keys yet"):
        adapter.render_range(ed, DockerSettings(), doc)
    ed.set_value_at("AU12", 3, 1.0)
    ed.set_value_at("AU45", 9, 1.0)
    assert adapter.render_range(ed, DockerSettings(), doc) == (3, 9)
    doc.clip = (5, 40)
    assert adapter.render_range(ed, DockerSettings(range_from="document"), doc) == (5, 40)


# ------------------------------------------------------------------------------------------------------ the panel


def _panel(app, doc):
    from keyface.addon.krita.panel import KeyfacePanel

    return KeyfacePanel(fake_krita.App([doc] if doc else []), poll_ms=0)


def test_panel_follows_krita_time_and_stores_keys_in_the_document(app, character):
    img, box = character
    doc = fake_krita.Document(img.shape[1], img.shape[0], pixels=img.copy())
    panel = _panel(app, doc)
    assert panel.editor.frame_range == (0, 100)
    doc.time = 7
    panel.poll()
    assert panel.editor.frame == 7                      # Krita → docker
    panel.editor.set_frame(12)
    assert doc.time == 12                               # docker → Krita
    panel._value_edited("AU26", 3.0)                    # a slider: auto-key at the current frame
    assert adapter.ANNOTATION in doc.annotations
    panel.editor.set_value_at("AU26", 20, 0.0)
    doc.selection_rect = box
    panel.box_from_selection()
    assert panel.editor.face_box == box and panel.settings.box_from == "selection"

    reopened = _panel(app, doc)                         # a new docker on the same document: all restored
    assert [(k.frame, k.value) for k in reopened.editor.keys("AU26")] == [(12, 3.0), (20, 0.0)]
    assert reopened.editor.face_box == box and reopened.settings.box_from == "selection"
    other = fake_krita.Document(16, 16)
    panel.app.docs.append(other)
    panel.app.active = other
    panel.poll()                                        # switching documents shows that document's (empty) keys
    assert panel.editor.keys("AU26") == ()
    panel.app.active = doc
    panel.poll()
    assert len(panel.editor.keys("AU26")) == 2


def test_panel_errors_are_messages_not_exceptions(app):
    panel = _panel(app, None)
    assert "open or create a document" in panel.last_message[0]
    panel.render()
    assert panel.last_message == ("no document: open or create one first", True)
    doc = fake_krita.Document(32, 32)
    doc.source._model = "CMYKA"
    panel.app.docs.append(doc)
    panel.app.active = doc
    panel.poll()
    panel.box_from_selection()
    assert "nothing is selected" in panel.last_message[0] and panel.last_message[1]
    panel.editor.set_value_at("AU12", 0, 1.0)
    panel.render()
    assert "needs RGB/Alpha" in panel.last_message[0] and not panel.rendering
    from keyface.core import models
    from keyface.core.methods.atw import load

    missing = models.ModelInfo("test-missing-weights", "atw", "au17", "weights deleted (tests)",
                               Path("/nonexistent/weights.safetensors"), load)
    doc.source._model = "RGBA"
    failed = []
    with models.registered(missing):
        panel.editor.set_model("test-missing-weights")
        panel.editor.set_value_at("AU12", 0, 1.0)
        panel.editor.set_face_box((0, 0, 32, 32))
        panel.renderFailed.connect(failed.append)
        panel.render()
        _wait(app, lambda: failed or not panel.rendering)
    assert failed and "not found" in panel.last_message[0] and panel.last_message[1] and not doc.imported
    doc.annotations[adapter.ANNOTATION] = b"garbage"
    fresh = _panel(app, doc)                            # a damaged annotation: a message, defaults, nothing lost
    assert "not valid JSON" in fresh.last_message[0]
    assert doc.annotations[adapter.ANNOTATION] == b"garbage"


@pytest.mark.parametrize("depth", ["U8", "U16"])
def test_render_adds_a_new_animated_layer_and_leaves_the_source_alone(app, character, tmp_path, monkeypatch, depth):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    img, box = character
    if depth == "U16":
        img = img.astype(np.uint16) * 257
    doc = fake_krita.Document(img.shape[1], img.shape[0], depth, pixels=img.copy())
    panel = _panel(app, doc)
    panel.editor.set_model(MODEL)
    panel.editor.set_face_box(box)
    for frame, value in ((3, 0.0), (5, 5.0), (7, 0.0)):
        panel.editor.set_value_at("AU45", frame, value)
    done = []
    panel.renderFinished.connect(done.append)
    panel.render()
    assert panel.rendering
    _wait(app, lambda: done or not panel.rendering)
    assert done, panel.last_message
    assert doc.source.writes == 0 and np.array_equal(doc.source.pixels, img)
    files, first, step = doc.imported[0]
    assert (first, step, len(files)) == (3, 1, 5)
    layer = doc.root.children[-1]
    assert layer.name() == done[0] == "keyface: Background 3–7"
    assert sorted(layer.frames) == [3, 4, 5, 6, 7]
    expected = render_scene(panel.plan.scene, tmp_path / "ref", source=img)
    from keyface.core.imageio import read_image

    for f, path in zip(range(3, 8), expected, strict=True):
        frame = layer.frames[f]
        assert frame.shape == img.shape and frame.dtype == img.dtype
        assert np.array_equal(frame, read_image(path))
    assert np.array_equal(layer.frames[3], img)             # rest pose: the source exactly
    x, y, w, h = box
    assert not np.array_equal(layer.frames[5][y:y + h, x:x + w], img[y:y + h, x:x + w])
    assert not (tmp_path / "cache" / "keyface" / "krita").exists() or not any(
        (tmp_path / "cache" / "keyface" / "krita").iterdir())  # the rendered files are removed once imported


def _keyed_panel(app, img, box, tmp_path, monkeypatch, keys: dict):
    """A document of ``img`` with the docker on it: the test model, the face box, ``keys`` {channel: ((frame, value),
    …)}; renders cache under ``tmp_path``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    doc = fake_krita.Document(img.shape[1], img.shape[0], pixels=img.copy())
    panel = _panel(app, doc)
    panel.editor.set_model(MODEL)
    panel.editor.set_face_box(box)
    for channel, pairs in keys.items():
        for frame, value in pairs:
            panel.editor.set_value_at(channel, frame, value)
    return doc, panel


def test_cancelled_render_keeps_frames_and_resumes(app, character, tmp_path, monkeypatch):
    img, box = character
    doc, panel = _keyed_panel(app, img, box, tmp_path, monkeypatch, {"AU12": ((0, 0.0),)})
    panel.editor.set_value_at("AU12", 11, 5.0)
    panel.render()
    panel.cancel()
    _wait(app, lambda: not panel.rendering)
    assert "cancelled" in panel.last_message[0] and not doc.imported
    kept = sorted(p.name for p in panel.plan.out_dir.glob("*.png"))
    assert len(kept) < 12
    done = []
    panel.renderFinished.connect(done.append)
    panel.render()                                          # same pixels and keys: the same folder, resumed
    _wait(app, lambda: done or not panel.rendering)
    assert done and len(doc.imported[0][0]) == 12


# ------------------------------------------------------------------------------------------------------ install


def test_ini_editing_keeps_everything_else():
    text = "[General]\nfoo=1\n\n[python]\nenable_other=true\n\n[Zeta]\nx=y\n"
    on = install.set_ini_value(text, "python", "enable_keyface_krita", "true")
    assert on == "[General]\nfoo=1\n\n[python]\nenable_other=true\nenable_keyface_krita=true\n\n[Zeta]\nx=y\n"
    assert install.set_ini_value(on, "python", "enable_keyface_krita", "true") == on
    assert install.set_ini_value(on, "python", "enable_keyface_krita", None) == text
    assert install.set_ini_value("", "python", "k", "v") == "[python]\nk=v\n"
    assert install.set_ini_value("[a]\nb=c\n", "python", "k", "v") == "[a]\nb=c\n\n[python]\nk=v\n"


def test_install_and_uninstall(tmp_path, capsys):
    pykrita, rc = tmp_path / "pykrita", tmp_path / "kritarc"
    rc.write_text("[General]\ntheme=dark\n")
    assert main(["krita", "install", "--pykrita", str(pykrita), "--kritarc", str(rc)]) == 0
    assert "restart Krita" in capsys.readouterr().out
    desktop = (pykrita / "keyface_krita.desktop").read_text()
    assert "X-KDE-Library=keyface_krita" in desktop and "ServiceTypes=Krita/PythonPlugin" in desktop
    env = json.loads((pykrita / "keyface_krita" / "environment.json").read_text())
    import sys

    assert env["python"] == list(sys.version_info[:2]) and env["site_packages"]
    shim = (pykrita / "keyface_krita" / "__init__.py").read_text()
    compile(shim, "shim", "exec")
    assert shim.index("import PyQt5.QtCore") < shim.index("site.addsitedir")  # Krita's PyQt5 is bound first
    assert rc.read_text() == "[General]\ntheme=dark\n\n[python]\nenable_keyface_krita=true\n"
    assert main(["krita", "install", "--pykrita", str(pykrita), "--kritarc", str(rc)]) == 0  # again: no change
    assert rc.read_text().count("enable_keyface_krita") == 1
    assert main(["krita", "uninstall", "--pykrita", str(pykrita), "--kritarc", str(rc)]) == 0
    assert not (pykrita / "keyface_krita").exists() and not (pykrita / "keyface_krita.desktop").exists()
    assert rc.read_text() == "[General]\ntheme=dark\n\n[python]\n"
    foreign = pykrita / "keyface_krita"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("# someone else's\n")
    assert main(["krita", "install", "--pykrita", str(pykrita), "--kritarc", str(rc)]) == 2
    assert "not written by keyface" in capsys.readouterr().err
    assert (foreign / "__init__.py").read_text() == "# someone else's\n"


def test_render_can_also_export_a_movie_beside_the_document(app, character, tmp_path, monkeypatch):
    # "Also export: mp4": the layer as before, plus a movie beside the saved document with every frame; an unsaved
    # document gets a clear message and no layer.
    import av

    img, box = character
    doc, panel = _keyed_panel(app, img, box, tmp_path, monkeypatch, {"AU45": ((3, 0.0), (5, 5.0), (7, 0.0))})
    panel.movie.setCurrentIndex(panel.movie.findData("mp4"))
    assert panel.settings.movie == "mp4"
    failed = []
    panel.renderFailed.connect(failed.append)
    panel.render()
    _wait(app, lambda: failed or not panel.rendering)
    assert failed and "save the document first" in panel.last_message[0] and not doc.imported
    doc.file_name = str(tmp_path / "painting.kra")
    done = []
    panel.renderFinished.connect(done.append)
    panel.render()
    _wait(app, lambda: done or not panel.rendering)
    assert done and len(doc.imported) == 1, panel.last_message
    movie = tmp_path / "painting_Background_3-7.mp4"
    assert "painting_Background_3-7.mp4" in panel.last_message[0]
    with av.open(str(movie)) as m:
        assert sum(1 for _ in m.decode(video=0)) == 5 and m.streams.video[0].average_rate == 24


def test_panel_adapts_the_model_to_the_layer(app, tmp_path):
    # "Adapt to this character": the chosen layer's pixels, the teacher's renders, a fine-tuned copy saved beside the
    # document and picked in the docker; the layer is not touched
    from fake_teacher import registered_pair

    pr = PairRenderer(sample_character(3), (256, 256))
    img = quantise(pr.rest.image)
    doc = fake_krita.Document(256, 256, pixels=img.copy())
    doc.file_name = str(tmp_path / "me.kra")
    with registered_pair(tmp_path) as (teacher, student):
        panel = _panel(app, doc)
        panel.editor.set_model(student)
        panel.editor.set_face_box(tuple(pr.face_box(Pose(dict(REST)))))
        panel.adapt_minutes.setMinimum(0.1)
        panel.adapt_minutes.setValue(0.15)
        done = []
        panel.adaptFinished.connect(done.append)
        panel.adapt()
        assert panel.busy and not panel.render_button.isEnabled()
        panel.render()  # refused while adapting: a message, not a second job
        assert "already running" in panel.last_message[0]
        _wait(app, lambda: not panel.busy, 300)
    want = f"atw-au17:{tmp_path / 'me-test-atw-student-adapted'}"
    assert done == [want], panel.last_message
    assert panel.models.currentText() == want and "PSNR against test-teacher" in panel.last_message[0]
    assert (tmp_path / "me-test-atw-student-adapted" / "atw_au17.safetensors").is_file()
    assert np.array_equal(doc.source.pixels, img) and not doc.imported

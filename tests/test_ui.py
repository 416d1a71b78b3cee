import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PyQt5.QtWidgets")
from PyQt5.QtCore import QPoint, Qt  # noqa: E402
from PyQt5.QtTest import QTest  # noqa: E402

from keyface.core import models  # noqa: E402
from keyface.core.methods.atw import load  # noqa: E402
from keyface.core.methods.atw.networks import (  # noqa: E402
    ATWConfig,
    Generator,
    save_generator,
)
from keyface.core.scene import load_scene  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "core" / "data" / "example"


@pytest.fixture(scope="module")
def app():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The bundled example, driving a small random-weight model (the UI's mechanics, not the model's quality)."""
    import torch

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ui")
    weights = d / "random.safetensors"
    save_generator(Generator(ATWConfig(grid=64, base=4, critic_base=4, motion_blocks=1, refine_blocks=1)), weights)
    info = models.ModelInfo("test-ui-atw", "atw", "au17", "random weights (tests)", weights, load)
    shutil.copy(EXAMPLE / "character.png", d / "character.png")
    doc = json.loads((EXAMPLE / "scene.json").read_text())
    doc["model"], doc["schema"] = "test-ui-atw", "au17"  # the bundled 4K character, keyed in action units
    doc["tracks"] = {name: {"keys": [{"frame": f, "value": v, "interpolation": "ease_in_out"} for f, v in keys]}
                     for name, keys in {"AU45": [(0, 0), (4, 5), (8, 0), (36, 0), (40, 5), (44, 0)],
                                        "AU12": [(10, 0), (20, 5), (30, 5), (40, 0)],
                                        "AU26": [(14, 0), (22, 4), (28, 1), (34, 0)]}.items()}
    (d / "scene.json").write_text(json.dumps(doc))
    with models.registered(info):
        yield d


def _wait(app, cond, timeout=30.0):
    end = time.time() + timeout
    while not cond() and time.time() < end:
        app.processEvents()
        time.sleep(0.01)
    return cond()


@pytest.fixture
def window(app, example):
    from keyface.ui.main_window import MainWindow

    w = MainWindow()
    w.show()
    assert w.open_path(example / "scene.json")
    yield w
    w.doc.dirty = False
    w.close()


def test_window_loads_the_example_and_previews_without_blocking(app, window):
    assert window.doc.model_id == "test-ui-atw" and window.doc.frame_range == (0, 47)
    assert window.canvas.box_item.isVisible()
    assert set(window.params.rows) == set(window.doc.schema.names)
    t0 = time.time()
    window.doc.set_frame(4)
    assert time.time() - t0 < 0.5  # the request returns at once; the generator runs on its own thread
    assert _wait(app, lambda: window.last_preview is not None and window.last_preview[0] == 4)
    frame, img = window.last_preview
    assert img.shape == (64, 64, 4) and img.dtype == np.float32


def test_keys_through_the_widgets_scrub_and_values(app, window):
    doc = window.doc
    doc.set_frame(10)
    row = window.params.rows["AU06"]
    row.spin.setValue(2.5)  # auto-key at the current frame
    assert doc.timeline.track("AU06").key_at(10).value == pytest.approx(2.5)
    row.slider.setValue(1000)  # the slider's end: the channel's maximum
    assert doc.timeline.track("AU06").key_at(10).value == pytest.approx(5.0)
    doc.set_frame(30)
    window.params.rows["AU06"].spin.setValue(0.0)
    doc.set_frame(20)  # scrub between the keys: sampled value in between, shown by the panel
    v = doc.values_at()[doc.schema.index("AU06")]
    assert 0 < v < 5
    assert window.params.rows["AU06"].spin.value() == pytest.approx(v, abs=0.01)
    assert window.frame_spin.value() == 20 and doc.dirty and window.windowTitle().endswith("*")
    window.insert_keys()  # "I": key every keyed channel at the current frame, at its current value
    assert doc.timeline.track("AU06").key_at(20).value == pytest.approx(v)
    assert doc.timeline.track("AU12").key_at(20) is not None


def test_dope_sheet_insert_move_delete_copy_paste(app, window):
    sheet = window.dope
    sheet.resize(900, 400)
    doc = window.doc
    y = int(sheet.y_of("AU04"))
    QTest.mouseDClick(sheet, Qt.LeftButton, Qt.NoModifier, QPoint(int(sheet.x_of(6)), y))
    assert doc.timeline.track("AU04").key_at(6) is not None
    QTest.mousePress(sheet, Qt.LeftButton, Qt.NoModifier, QPoint(int(sheet.x_of(6)), y))
    QTest.mouseRelease(sheet, Qt.LeftButton, Qt.NoModifier, QPoint(int(sheet.x_of(9)), y))
    assert doc.timeline.track("AU04").key_at(9) is not None and doc.timeline.track("AU04").key_at(6) is None
    sheet.setFocus()
    QTest.keyClick(sheet, Qt.Key_C, Qt.ControlModifier)
    doc.set_frame(15)
    QTest.keyClick(sheet, Qt.Key_V, Qt.ControlModifier)
    assert doc.timeline.track("AU04").key_at(15) is not None
    doc.set_interpolation([("AU04", 15)], "constant")
    assert doc.timeline.track("AU04").key_at(15).interpolation == "constant"
    sheet.selected = {("AU04", 9), ("AU04", 15)}
    QTest.keyClick(sheet, Qt.Key_Delete)
    assert not doc.timeline.track("AU04").keys
    # clicking on the ruler scrubs
    QTest.mouseClick(sheet, Qt.LeftButton, Qt.NoModifier, QPoint(int(sheet.x_of(33)), 5))
    assert doc.frame == 33


def test_curve_view_handles(app, window):
    doc = window.doc
    window.curve.resize(600, 300)
    window.curve.set_channel("AU45")
    key = doc.timeline.track("AU45").keys[1]
    doc.set_interpolation([("AU45", key.frame)], "bezier")
    doc.set_handles("AU45", key.frame, right=(1.0, 1.0))
    assert doc.timeline.track("AU45").key_at(key.frame).handle_right == (1.0, 1.0)
    window.curve.grab()  # paints without error


def test_save_load_round_trip(app, window, example, tmp_path):
    window.doc.set_frame(12)
    window.params.rows["AU26"].spin.setValue(3.0)
    out = tmp_path / "saved.json"
    assert window._save_to(out)
    assert not window.doc.dirty
    scene = load_scene(out)
    assert scene.timeline.track("AU26").key_at(12).value == pytest.approx(3.0)
    assert scene.source_path == (example / "character.png").resolve()
    from keyface.ui.main_window import MainWindow

    w2 = MainWindow()
    assert w2.open_path(out) and w2.doc.timeline.track("AU26").key_at(12).value == pytest.approx(3.0)
    w2.close()


def test_errors_show_in_the_window(app, window, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    window.doc.dirty = False
    assert not window.open_path(bad)
    assert "cannot read image" in window.last_error
    window.error_box.close()


def test_render_dialog_renders_and_cancels(app, window, tmp_path):
    from keyface.ui.main_window import RenderDialog

    dlg = RenderDialog(window.doc)
    dlg.folder.setText(str(tmp_path / "frames"))
    dlg.first.setValue(0)
    dlg.last.setValue(2)
    dlg.start()
    assert _wait(app, lambda: dlg.worker is None, 120)
    assert sorted(p.name for p in (tmp_path / "frames").glob("*.png")) == [
        "frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert "done" in dlg.status.text() and dlg.bar.value() == 3
    dlg.folder.setText(str(tmp_path / "more"))
    dlg.last.setValue(47)
    dlg.start()
    dlg.cancel()
    assert _wait(app, lambda: dlg.worker is None, 120)
    written = len(list((tmp_path / "more").glob("*.png")))
    assert written < 48 and "cancelled" in dlg.status.text()
    dlg.format.setCurrentText("mp4")  # a movie named after the folder: clip.mp4; a cancelled one leaves nothing
    dlg.folder.setText(str(tmp_path / "clip"))
    dlg.last.setValue(2)
    dlg.start()
    assert _wait(app, lambda: dlg.worker is None, 120)
    assert (tmp_path / "clip.mp4").stat().st_size > 0 and "the movie is written" in dlg.status.text()
    import av

    with av.open(str(tmp_path / "clip.mp4")) as movie:
        assert sum(1 for _ in movie.decode(video=0)) == 3
    dlg.folder.setText(str(tmp_path / "gone"))
    dlg.last.setValue(47)
    dlg.start()
    dlg.cancel()
    assert _wait(app, lambda: dlg.worker is None, 120)
    assert not list(tmp_path.glob("gone*")) and not list(tmp_path.glob(".gone*")) and "no movie" in dlg.status.text()


def test_parameter_panel_links_left_and_right(app):
    from keyface.core.rig import get_schema
    from keyface.ui.params import ParameterPanel, partner

    schema = get_schema("character")
    assert partner(schema, "blink_left") == "blink_right" and partner(schema, "mouth_open") is None
    panel = ParameterPanel()
    panel.set_schema(schema)
    got = []
    panel.valueEdited.connect(lambda n, v: got.append((n, v)))
    panel.rows["blink_left"].spin.setValue(0.7)
    assert ("blink_left", 0.7) in got and ("blink_right", 0.7) in got
    assert panel.rows["blink_right"].spin.value() == pytest.approx(0.7)
    panel.links["eyes"].setChecked(False)
    got.clear()
    panel.rows["blink_left"].spin.setValue(0.2)
    assert got == [("blink_left", pytest.approx(0.2))]


def test_full_resolution_view_and_unsaved_prompt(app, window, monkeypatch):
    window.doc.set_frame(4)
    window.full_frame()
    assert _wait(app, lambda: getattr(window, "full_dialog", None) is not None, 60)
    assert f"{window.doc.image.shape[1]}×{window.doc.image.shape[0]}" in window.full_dialog.windowTitle()
    window.full_dialog.close()
    window.params.rows["AU09"].spin.setValue(1.0)
    assert window.doc.dirty
    monkeypatch.setattr(QtWidgets.QMessageBox, "question", lambda *a, **k: QtWidgets.QMessageBox.Cancel)
    assert not window.maybe_save()  # cancel keeps the window and the changes
    monkeypatch.setattr(QtWidgets.QMessageBox, "question", lambda *a, **k: QtWidgets.QMessageBox.Discard)
    assert window.maybe_save()


def test_face_box_drag_moves_the_box(app, window):
    view = window.canvas
    view.resize(800, 600)
    view.fit()
    before = window.doc.face_box
    item = view.box_item
    r = item.rect()
    start = view.mapFromScene(r.center())
    end = view.mapFromScene(r.center().x() + 100, r.center().y() + 50)
    from PyQt5.QtCore import QEvent
    from PyQt5.QtGui import QMouseEvent

    QTest.mousePress(view.viewport(), Qt.LeftButton, Qt.NoModifier, start)
    move = QMouseEvent(QEvent.MouseMove, end, Qt.NoButton, Qt.LeftButton, Qt.NoModifier)  # a drag: button held
    QtWidgets.QApplication.sendEvent(view.viewport(), move)
    QTest.mouseRelease(view.viewport(), Qt.LeftButton, Qt.NoModifier, end)
    after = window.doc.face_box
    assert after != before and after[2] == before[2]  # moved, same size
    assert abs((after[0] - before[0]) - 100) < 15 and abs((after[1] - before[1]) - 50) < 15


def _shipped_and_official_models():
    from conftest import SHARED

    from keyface.core.models import available_models

    ids = [(m.id, EXAMPLE / "character.png") for m in available_models() if not m.id.startswith("test-")]
    character = SHARED / "thirdparty" / "tha4" / "character_models" / "lambda_00"
    if character.is_dir():
        ids.append((f"tha4-student:{character}", character / "character.png"))
    return ids


@pytest.mark.parametrize("model_id, image", _shipped_and_official_models(), ids=lambda v: str(v).split("/")[-1])
def test_editor_previews_each_model_in_its_own_region(app, model_id, image):
    # Without a drawn box the editor stores none: each model derives its working region from the face box (CPTNet its
    # head crop, THA its 512² frame), the preview is drawn there and the face box used is shown, not stored.
    from keyface.core.imageio import read_image
    from keyface.core.pipeline import FrameJob
    from keyface.ui.main_window import MainWindow

    w = MainWindow()
    w.show()
    try:
        assert w.open_path(image)
        w.doc.set_model(model_id)
        w.request_preview()
        assert _wait(app, lambda: w.preview_boxes is not None and w.preview_boxes[0] == model_id, timeout=120), \
            w.last_error
        job = FrameJob.prepare(read_image(image), model_id)
        _, face, working, marks = w.preview_boxes
        if job.runtime.has_fit:  # a fitted face model (F³A): its landmarks are drawn over the face, in the region
            assert marks.shape == (44, 2) and w.canvas.landmark_item.isVisible()
            assert ((marks >= (working.x, working.y)) & (marks < (working.x + working.w, working.y + working.h))).all()
        else:
            assert marks is None and not w.canvas.landmark_item.isVisible()
        assert (face, working) == (job.face_box, job.box) and w.doc.face_box is None
        r = w.canvas.box_item.rect()
        assert (r.x(), r.y(), r.width(), r.height()) == tuple(face)
        item = w.canvas.preview_item
        assert (item.pos().x(), item.pos().y()) == (working.x, working.y)
        assert item.scale() * item.pixmap().width() == pytest.approx(working.w)
        if model_id.startswith("cptnet"):
            assert working != face and working.w == 2 * face.w  # the head crop, not the face box
        if model_id.startswith("tha4-student"):
            assert tuple(working) == (0, 0, 512, 512)  # a THA frame as it is
    finally:
        w.doc.dirty = False
        w.close()


def test_an_exception_in_a_worker_is_shown_and_the_editor_goes_on(app, window, tmp_path, monkeypatch):
    # A bug in the generator (any exception, not only KeyfaceError) during a preview and during a render: the editor
    # shows it, stays usable, and works again once the fault is gone.
    from keyface.core import pipeline
    from keyface.ui.main_window import RenderDialog

    real_prepare = pipeline.FrameJob.prepare.__func__
    shown = []
    window.preview.ready.connect(lambda *a: shown.append(a))
    window.request_preview()
    assert _wait(app, lambda: bool(shown))  # the worker is idle

    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(pipeline.FrameJob, "prepare", classmethod(broken))
    window.last_error = None
    d = window.doc  # a face box not previewed yet: the engine prepares a new job
    window.preview.request(d.image, d.model_id, (1000, 300, 500, 500), d.frame, d.values_at())
    assert _wait(app, lambda: window.last_error is not None)
    assert "preview failed: injected fault" in window.last_error

    monkeypatch.setattr(pipeline, "render_scene", broken)
    dialog = RenderDialog(window.doc, parent=window)
    dialog.folder.setText(str(tmp_path / "frames"))
    dialog.start()
    assert _wait(app, lambda: dialog.worker is None)
    assert "render failed: injected fault" in dialog.status.text() and dialog.start_button.isEnabled()

    monkeypatch.setattr(pipeline.FrameJob, "prepare", classmethod(real_prepare))
    window.last_error = None
    shown.clear()
    window.request_preview()
    assert _wait(app, lambda: bool(shown)) and window.last_error is None
    dialog.close()


def test_import_motion_from_video(app, window, tmp_path, monkeypatch):
    # a style-mapping runtime reads a reference folder (its detections replaced by a known mouth-opening curve, so
    # the result is exact); the keys, converted to the document's schema (au17) and reduced, replace the keyed
    # channels and the range grows to hold the clip; cancel changes nothing
    import torch

    from keyface.core.imageio import write_image
    from keyface.core.methods.stylemap.networks import StyleMap, StyleMapConfig
    from keyface.core.methods.stylemap.runtime import StyleMapRuntime
    from keyface.core.rig import character_schema, convert
    from keyface.core.weights import save_weights
    from keyface.ui.main_window import MotionDialog

    torch.manual_seed(0)
    weights = tmp_path / "sm.safetensors"
    save_weights(StyleMap(StyleMapConfig(size=64, base=4, hourglass=4, blocks3d=1, blocks2d=1)), weights, "stylemap")
    info = models.ModelInfo("test-ui-stylemap", "stylemap", "kp", "random weights (tests)", weights,
                            lambda i, device="cpu": StyleMapRuntime(weights, device))
    c = character_schema()
    motion = np.zeros((60, len(c)))
    motion[:, c.index("mouth_open")] = np.linspace(0, 1, 60)
    monkeypatch.setattr(StyleMapRuntime, "motion_keys", lambda self, crops: convert(motion[:len(crops)], c, "kp"))
    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(60):
        write_image(ref / f"{i:03d}.png", np.full((96, 96, 3), 4 * i, np.uint8))
    doc = window.doc
    doc.set_range(0, 47)
    with models.registered(info):
        dlg = MotionDialog(doc)
        choices = [dlg.model.itemText(i) for i in range(dlg.model.count())]
        assert "test-ui-stylemap" in choices and "test-ui-atw" not in choices  # the models that read keypoints
        dlg.model.setCurrentText("test-ui-stylemap")
        dlg.reference.setText(str(ref))
        dlg.smooth.setValue(0)
        dlg.start()
        dlg.cancel()  # cancelled at once: nothing changes
        assert _wait(app, lambda: dlg.worker is None, 120)
        assert dlg.report is None and doc.frame_range == (0, 47) and "cancelled" in dlg.status.text()
        dlg.start()
        assert _wait(app, lambda: dlg.worker is None, 120)
    assert dlg.report is not None, dlg.status.text()
    assert dlg.report["frames"] == 60 and doc.frame_range == (0, 59)
    assert "imported" in dlg.status.text() and doc.dirty and doc.schema.name == "au17"
    au26 = doc.timeline.tracks["AU26"]
    assert 2 <= len(au26) < 20  # reduced: a ramp needs few keys
    want = convert(motion, c, "au17")[:, doc.schema.index("AU26")]
    got = doc.timeline.sample(np.arange(60))[:, doc.schema.index("AU26")]
    assert np.abs(got - want).max() <= 0.005 * 5 + 1e-9  # within the tolerance (0.5 % of AU26's 0–5 range)
    assert want[-1] > 2  # the mouth really opened


def test_adapt_to_this_character(app, tmp_path):
    # the dialog lists the adaptable models and the teachers; cancel while the teacher renders writes nothing; a run
    # adds the adapted model (atw-au17:FOLDER) to the window's picker and picks it
    from fake_teacher import registered_pair

    from keyface.core.imageio import write_image
    from keyface.core.pixels import quantise
    from keyface.core.synth.character import sample_character
    from keyface.core.synth.face import Pose
    from keyface.core.synth.render import FRAMINGS, REST
    from keyface.core.synth.sample import PairRenderer
    from keyface.ui.main_window import AdaptDialog, MainWindow

    pr = PairRenderer(sample_character(3), (256, 256), FRAMINGS["full"])
    write_image(tmp_path / "me.png", quantise(pr.rest.image))
    with registered_pair(tmp_path) as (teacher, student):
        w = MainWindow()
        assert w.open_path(tmp_path / "me.png")
        w.doc.set_face_box(pr.face_box(Pose(dict(REST))))
        dlg = AdaptDialog(w.doc, parent=w, on_model=w.add_model)
        models_listed = [dlg.model.itemText(i) for i in range(dlg.model.count())]
        assert student in models_listed and teacher not in models_listed
        assert teacher in [dlg.teacher.itemText(i) for i in range(dlg.teacher.count())]
        dlg.model.setCurrentText(student)
        assert dlg.folder.text() == str(tmp_path / f"me-{student}-adapted")  # the default name follows the model
        dlg.folder.setText(str(tmp_path / "mine"))
        dlg.model.setCurrentIndex(0 if dlg.model.currentIndex() else 1)
        assert dlg.folder.text() == str(tmp_path / "mine")  # a name the user typed stays
        dlg.model.setCurrentText(student)
        dlg.teacher.setCurrentText(teacher)
        dlg.minutes.setValue(1.0)
        dlg.folder.setText(str(tmp_path / "cancelled"))
        dlg.start()
        dlg.cancel()
        assert _wait(app, lambda: dlg.worker is None, 120)
        assert dlg.record is None and "cancelled" in dlg.status.text() and not (tmp_path / "cancelled").exists()
        dlg.minutes.setMinimum(0.1)
        dlg.minutes.setValue(0.15)
        dlg.folder.setText(str(tmp_path / "adapted"))
        dlg.start()
        assert _wait(app, lambda: dlg.worker is None, 300)
        assert dlg.record is not None, dlg.status.text()
        assert w.models.currentText() == f"atw-au17:{tmp_path / 'adapted'}" == w.doc.model_id
        assert "PSNR against test-teacher" in dlg.status.text()
        w.doc.dirty = False
        w.close()

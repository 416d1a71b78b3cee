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
from keyface.core.methods.atw.networks import ATWConfig, Generator  # noqa: E402
from keyface.core.methods.atw.trainer import save_generator  # noqa: E402
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
    models.register(models.ModelInfo("test-ui-atw", "atw", "au17", "random weights (tests)", weights, load))
    shutil.copy(EXAMPLE / "character.png", d / "character.png")
    doc = json.loads((EXAMPLE / "scene.json").read_text())
    doc["model"] = "test-ui-atw"
    (d / "scene.json").write_text(json.dumps(doc))
    return d


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

"""Test driver (installed only into a throw-away Krita profile by tests/test_krita_e2e.py): once Krita's window is
up, it drives the keyface docker like a user would — new 3840×2160 RGBA document, paint the source into its layer,
select the face, key three expressions, press Render — then saves the .kra, writes result.json and exits Krita.

Configured by the JSON file named in $KEYFACE_E2E: out (folder), image (source PNG), depth (U8/U16), box
(x, y, w, h selection), keys ({channel: [[frame, value], ...]}), screenshot_frame (optional)."""

import hashlib
import json
import os
import traceback
from pathlib import Path

from krita import Extension, Krita, Selection
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication, QDockWidget

CFG = json.loads(Path(os.environ["KEYFACE_E2E"]).read_text()) if os.environ.get("KEYFACE_E2E") else None
STATE = {"events": []}


def out(name):
    return Path(CFG["out"]) / name


def finish(**result):
    STATE.update(result)
    tmp = out("result.json.tmp")
    plain = (str, int, float, bool, list, dict, type(None))
    tmp.write_text(json.dumps({k: v for k, v in STATE.items() if isinstance(v, plain)}, indent=1))
    tmp.replace(out("result.json"))
    os._exit(0)  # Krita 5.1 can crash while quitting with a document open; the result is already written


def guard(fn):
    def run(*args):
        try:
            fn(*args)
        except Exception:
            finish(ok=False, error=traceback.format_exc())
    return run


def layer_hash(node, w, h):
    return hashlib.sha1(bytes(node.pixelData(0, 0, w, h))).hexdigest()


@guard
def start():
    app = Krita.instance()
    doc = app.createDocument(3840, 2160, "keyface e2e", "RGBA", CFG["depth"], "", 300.0)
    if CFG.get("clip_end"):
        doc.setFullClipRangeEndTime(CFG["clip_end"])
    app.activeWindow().addView(doc)
    STATE["doc"] = doc
    QTimer.singleShot(3000, paint)


@guard
def paint():
    from keyface.addon.krita import adapter, plugin
    from keyface.core.imageio import read_image

    doc = STATE["doc"]
    img = read_image(CFG["image"])
    if CFG["depth"] == "U16" and img.dtype != "uint16":
        img = img.astype("uint16") * 257
    node = doc.activeNode()
    node.setPixelData(adapter.rgba_to_bgra_bytes(img), 0, 0, doc.width(), doc.height())
    doc.refreshProjection()
    doc.waitForDone()
    STATE["source_layer"] = node.name()
    STATE["source_hash_before"] = layer_hash(node, doc.width(), doc.height())
    sel = Selection()
    sel.select(*CFG["box"], 255)
    doc.setSelection(sel)
    panel = plugin.PANELS[0]
    STATE["panel"] = panel
    STATE["menu_action"] = Krita.instance().action("keyface_render") is not None
    panel.poll()
    panel.box_from_selection()
    for channel, keys in CFG["keys"].items():
        for frame, value in keys:
            panel.editor.set_value_at(channel, frame, value)
    panel.renderFinished.connect(rendered)
    if CFG.get("inject_failure"):
        inject_failure(panel)
    else:
        panel.renderFailed.connect(lambda msg: finish(ok=False, error="render failed: " + msg))
    press_render(panel)


def press_render(panel):
    panel.render()
    if not panel.rendering:
        finish(ok=False, error="render did not start: " + panel.last_message[0])
    STATE["events"].append("render started")


def inject_failure(panel):
    """The first render's worker raises (a bug in a generator, not a KeyfaceError): the docker must show it and stay
    usable — the test then renders again through the same docker, with the fault gone."""
    from keyface.core import pipeline

    real = pipeline.render_scene

    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    @guard
    def failed_once(msg):
        panel.renderFailed.disconnect(failed_once)
        pipeline.render_scene = real
        STATE["injected"] = {"message": msg, "shown": panel.last_message[0], "is_error": bool(panel.last_message[1]),
                             "rendering_after": panel.rendering, "button_enabled": panel.render_button.isEnabled()}
        STATE["events"].append("injected failure shown")
        panel.renderFailed.connect(lambda m: finish(ok=False, error="render failed: " + m))
        QTimer.singleShot(500, guard(lambda: press_render(panel)))

    pipeline.render_scene = broken
    panel.renderFailed.connect(failed_once)


@guard
def rendered(layer_name):
    doc, panel = STATE["doc"], STATE["panel"]
    STATE["events"].append("rendered " + layer_name)
    STATE["layer"] = layer_name
    STATE["message"] = panel.last_message[0]
    src = [n for n in doc.rootNode().childNodes() if n.name() == STATE["source_layer"]][0]
    STATE["source_hash_after"] = layer_hash(src, doc.width(), doc.height())
    STATE["panel"] = None
    STATE["panel_widget"] = panel
    doc.setSelection(Selection())  # nothing selected in the screenshot
    if CFG.get("screenshot_frame") is not None:
        doc.setCurrentTime(CFG["screenshot_frame"])
    QTimer.singleShot(1500, lambda: save(panel))


@guard
def save(panel):
    doc = STATE.pop("doc")
    if CFG.get("screenshot"):
        screenshot()
    doc.setBatchmode(True)
    if not doc.saveAs(str(out("e2e.kra"))):
        finish(ok=False, error="saveAs failed")
    doc.close()
    again = Krita.instance().openDocument(str(out("e2e.kra")))
    Krita.instance().activeWindow().addView(again)
    STATE["reopened"] = again
    QTimer.singleShot(2000, reopened)


@guard
def reopened():
    from keyface.addon.krita import plugin

    panel = plugin.PANELS[0]
    panel.poll()
    STATE["reopened"] = None
    STATE["reopened_keys"] = {c: [[k.frame, k.value] for k in panel.editor.timeline.track(c).keys]
                              for c in CFG["keys"]}
    STATE["reopened_box"] = list(panel.editor.face_box) if panel.editor.face_box else None
    finish(ok=True, saved=True)


def screenshot():
    """The docker (and Krita's timeline) shown big enough to read, for docs/."""
    window = Krita.instance().activeWindow().qwindow()
    keep = {"keyface_docker", "KisLayerBox", "TimelineDocker"}
    for dock in window.findChildren(QDockWidget):
        name = dock.objectName()
        if name in keep:
            dock.show()
            dock.raise_()
        elif dock.isVisible() and window.dockWidgetArea(dock) != 0:
            dock.hide()
    window.resize(1600, 1100)
    panel = STATE["panel_widget"]
    panel.tabs.setCurrentIndex(CFG.get("screenshot_tab", 0))
    if CFG.get("screenshot_channel"):
        panel.curve.set_channel(CFG["screenshot_channel"])
        scroll = panel.tabs.widget(1).widget(0)
        QApplication.processEvents()
        scroll.verticalScrollBar().setValue(scroll.verticalScrollBar().maximum())
    QApplication.processEvents()
    STATE["dockers"] = sorted(d.objectName() for d in window.findChildren(QDockWidget))
    window.grab().save(str(out("krita.png")))


class Driver(Extension):
    def setup(self):
        if CFG is not None:
            QTimer.singleShot(2000, start)
            QTimer.singleShot(1000 * CFG.get("timeout", 900), lambda: finish(ok=False, error="timed out"))

    def createActions(self, window):
        pass


Krita.instance().addExtension(Driver(Krita.instance()))

"""The keyface docker's contents: the editor's model picker, parameter panel and keyframe timeline, bound to the
active Krita document instead of an image file.

The widget takes the Krita application object (``Krita.instance()``, or a fake in tests) and never imports ``krita``
itself. Krita has no signals for the current time, the active document or the selection, so the panel polls them
(every ``POLL_MS``): the timeline follows Krita's current frame, and scrubbing the dope sheet moves Krita's. Keys and
settings are written into the document (an annotation saved in the ``.kra``) whenever they change and read back when a
document becomes active. Every slot is guarded: a problem becomes a message in the docker, never an exception in
Krita's event loop.
"""

from __future__ import annotations

import functools
import traceback
from pathlib import Path

from PyQt5.QtCore import Qt, QTimer, pyqtSignal
from PyQt5.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from keyface.core.errors import KeyfaceError
from keyface.core.models import available_models
from keyface.core.video import MOVIE_FORMATS
from keyface.ui.document import EditorDocument
from keyface.ui.params import ParameterPanel
from keyface.ui.timeline_view import CurveView, DopeSheet
from keyface.ui.workers import AdaptWorker, RenderWorker

from . import adapter
from .adapter import DockerSettings

POLL_MS = 150
RANGES = (("keys", "First to last key"), ("document", "Document playback range"))


def guarded(method):
    """Run a slot; show any error in the panel instead of raising into Qt (PyQt aborts on uncaught errors)."""

    @functools.wraps(method)
    def run(self, *args):
        try:
            return method(self, *args)
        except KeyfaceError as exc:
            self.show_message(str(exc), error=True)
        except MemoryError:
            self.show_message("out of memory: close other documents or use a smaller face box", error=True)
        except Exception as exc:
            traceback.print_exc()
            self.show_message(f"internal error: {exc!r} (details on Krita's console)", error=True)
        return None

    return run


def _doc_key(doc) -> str | None:
    return None if doc is None else str(doc.rootNode().uniqueId())


class KeyfacePanel(QWidget):
    renderFinished = pyqtSignal(str)   # name of the new animated layer
    renderFailed = pyqtSignal(str)
    adaptFinished = pyqtSignal(str)    # the adapted model's id

    def __init__(self, app, parent=None, poll_ms: int = POLL_MS):
        super().__init__(parent)
        self.app = app
        self.editor = EditorDocument(self)
        self.settings = DockerSettings()
        self.kdoc = None
        self._doc_key = "(not attached yet)"
        self._loading = False
        self.worker = None
        self.adapt_worker = None
        self.plan = None
        self.last_message = ("", False)
        self._build()
        self._connect()
        self.params.set_schema(self.editor.schema)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.poll)
        if poll_ms:
            self.timer.start(poll_ms)
        self.poll()

    # layout ----------------------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.message = QLabel("")
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        self.models = QComboBox()
        self.models.setObjectName("model_picker")
        for m in available_models():
            self.models.addItem(m.id)
        self.layers = QComboBox()
        self.layers.setObjectName("layer_picker")
        self.box_label = QLabel("automatic")
        self.box_selection = QPushButton("From selection")
        self.box_auto = QPushButton("Automatic")
        self.range = QComboBox()
        for key, text in RANGES:
            self.range.addItem(text, key)
        self.movie = QComboBox()
        self.movie.setObjectName("movie_picker")
        self.movie.addItem("none", "")
        for fmt in MOVIE_FORMATS:
            self.movie.addItem(fmt, fmt)
        self.movie.setToolTip("besides the new layer, a movie beside the document (mov and webm keep alpha)")
        self.devices = QComboBox()
        self.devices.addItem("cpu")
        try:
            import torch

            if torch.cuda.is_available():
                self.devices.addItem("cuda")
        except ImportError:
            pass
        form = QFormLayout()
        form.addRow("Model", self.models)
        form.addRow("Layer", self.layers)
        box_row = QHBoxLayout()
        for w in (self.box_label, self.box_selection, self.box_auto):
            box_row.addWidget(w)
        form.addRow("Face box", box_row)
        form.addRow("Frames", self.range)
        form.addRow("Also export", self.movie)
        form.addRow("Device", self.devices)
        self.scheduler = QLineEdit()
        self.scheduler.setObjectName("scheduler")
        self.scheduler.setPlaceholderText("off: render on this machine")
        self.scheduler.setToolTip("a Dask scheduler's address (tcp://HOST:8786): the frames render on that cluster "
                                  "and come back here (needs keyface[cluster] here and on the workers)")
        form.addRow("Cluster", self.scheduler)

        self.params = ParameterPanel()
        self.dope = DopeSheet(self.editor)
        self.curve = CurveView(self.editor)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.dope)
        keys = QSplitter(Qt.Vertical)
        keys.addWidget(scroll)
        keys.addWidget(self.curve)
        keys.setSizes([300, 150])
        self.tabs = QTabWidget()
        self.tabs.addTab(self.params, "Parameters")
        self.tabs.addTab(keys, "Keys")

        self.render_button = QPushButton("Render to new layer")
        self.render_button.setObjectName("render")
        self.adapt_button = QPushButton("Adapt to this character")
        self.adapt_button.setObjectName("adapt")
        self.adapt_button.setToolTip("fine-tune a copy of the model on THA3's renders of this layer (slow: the time "
                                     "below); the copy is saved beside the document and picked")
        self.adapt_minutes = QDoubleSpinBox()
        self.adapt_minutes.setObjectName("adapt_minutes")
        self.adapt_minutes.setRange(1.0, 240.0)
        self.adapt_minutes.setValue(10.0)
        self.adapt_minutes.setSuffix(" min")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        actions = QHBoxLayout()
        actions.addWidget(self.render_button)
        actions.addWidget(self.cancel_button)
        adapt_row = QHBoxLayout()
        adapt_row.addWidget(self.adapt_button)
        adapt_row.addWidget(self.adapt_minutes)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.tabs, 1)
        layout.addLayout(actions)
        layout.addLayout(adapt_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)

    def _connect(self) -> None:
        e = self.editor
        e.changed.connect(self._editor_changed)
        e.frameChanged.connect(self._editor_frame)
        self.params.valueEdited.connect(self._value_edited)
        self.params.resetRequested.connect(self._reset_channel)
        self.params.resetAllRequested.connect(self._reset_all)
        self.dope.channelActivated.connect(self.curve.set_channel)
        self.dope.error.connect(lambda m: self.show_message(m, error=True))
        self.curve.error.connect(lambda m: self.show_message(m, error=True))
        self.models.currentTextChanged.connect(self._pick_model)
        self.layers.currentIndexChanged.connect(self._pick_layer)
        self.range.currentIndexChanged.connect(self._pick_range)
        self.devices.currentTextChanged.connect(self._pick_device)
        self.movie.currentIndexChanged.connect(self._pick_movie)
        self.scheduler.editingFinished.connect(self._pick_scheduler)
        self.box_selection.clicked.connect(self.box_from_selection)
        self.box_auto.clicked.connect(self.box_automatic)
        self.render_button.clicked.connect(self.render)
        self.adapt_button.clicked.connect(self.adapt)
        self.cancel_button.clicked.connect(self.cancel)

    # messages --------------------------------------------------------------------------------------------------------
    def show_message(self, text: str, error: bool = False) -> None:
        self.last_message = (text, error)
        self.message.setText(text)
        self.message.setStyleSheet("color: #d04040;" if error else "")

    # Krita → panel ---------------------------------------------------------------------------------------------------
    @guarded
    def poll(self) -> None:
        doc = self.app.activeDocument()
        key = _doc_key(doc)
        if key != self._doc_key:
            self.attach(doc)
            return
        if doc is None:
            return
        self.kdoc = doc
        clip = (int(doc.fullClipRangeStartTime()), int(doc.fullClipRangeEndTime()))
        if clip != self.editor.frame_range and clip[1] >= clip[0]:
            self.editor.set_range(*clip, mark_dirty=False)
        t = int(doc.currentTime())
        if t != self.editor.frame:
            self._loading = True
            try:
                self.editor.set_frame(t)
            finally:
                self._loading = False
        self._refresh_layers(doc)

    def attach(self, doc) -> None:
        """Show ``doc`` (or nothing): its stored keys and settings, or fresh ones."""
        self.kdoc, self._doc_key = doc, _doc_key(doc)
        enabled = doc is not None
        for w in (self.params, self.dope, self.curve, self.render_button, self.box_selection, self.box_auto,
                  self.layers, self.range):
            w.setEnabled(enabled)
        if doc is None:
            self.show_message("open or create a document to animate it")
            return
        self._loading = True
        try:
            try:
                self.settings = adapter.load_state(self.editor, doc)
                self.show_message("")
            except KeyfaceError as exc:
                self.settings = DockerSettings()
                self.show_message(str(exc), error=True)
            self._refresh_layers(doc, force=True)
            self._show_settings()
            self.editor.changed.emit()
            self.editor.frameChanged.emit(self.editor.frame)
        finally:
            self._loading = False

    def _refresh_layers(self, doc, force: bool = False) -> None:
        nodes = [n for n in adapter.all_nodes(doc.rootNode()) if n.type() == "paintlayer"]
        entries = [("Active layer", "")] + [(n.name(), str(n.uniqueId())) for n in nodes]
        current = [(self.layers.itemText(i), self.layers.itemData(i)) for i in range(self.layers.count())]
        if entries == current and not force:
            return
        self.layers.blockSignals(True)
        self.layers.clear()
        for text, uid in entries:
            self.layers.addItem(text, uid)
        idx = max(self.layers.findData(self.settings.layer), 0)
        self.layers.setCurrentIndex(idx)
        self.layers.blockSignals(False)

    def _show_settings(self) -> None:
        for combo, value in ((self.models, self.editor.model_id), (self.devices, self.settings.device)):
            combo.blockSignals(True)
            combo.setCurrentIndex(max(combo.findText(value or ""), 0))
            combo.blockSignals(False)
        for combo, value in ((self.range, self.settings.range_from), (self.movie, self.settings.movie)):
            combo.blockSignals(True)
            combo.setCurrentIndex(max(combo.findData(value), 0))
            combo.blockSignals(False)
        self.scheduler.setText(self.settings.scheduler)
        self._show_box()

    def _show_box(self) -> None:
        b = self.editor.face_box
        self.box_label.setText("automatic" if b is None else f"{b[2]}×{b[3]} at {b[0]}, {b[1]}")

    # panel → Krita ---------------------------------------------------------------------------------------------------
    def _store(self) -> None:
        if self.kdoc is not None and not self._loading:
            adapter.store_state(self.editor, self.settings, self.kdoc)

    @guarded
    def _editor_changed(self) -> None:
        if self.params.schema is not self.editor.schema:
            self.params.set_schema(self.editor.schema)
        self.params.show_values(self.editor.values_at())
        self._show_box()
        self._store()

    @guarded
    def _editor_frame(self, frame: int) -> None:
        self.params.show_values(self.editor.values_at())
        if self.kdoc is not None and not self._loading and int(self.kdoc.currentTime()) != frame:
            self.kdoc.setCurrentTime(frame)

    @guarded
    def _value_edited(self, channel: str, value: float) -> None:
        self._need_doc()
        self.editor.set_value(channel, value)

    @guarded
    def _reset_channel(self, channel: str) -> None:
        self.editor.reset_channel(channel)

    @guarded
    def _reset_all(self) -> None:
        self.editor.reset_all()

    @guarded
    def _pick_model(self, model_id: str) -> None:
        if model_id and model_id != self.editor.model_id:
            self.editor.set_model(model_id)

    @guarded
    def _pick_layer(self, index: int) -> None:
        self.settings.layer = self.layers.itemData(index) or ""
        self._store()

    @guarded
    def _pick_range(self, index: int) -> None:
        self.settings.range_from = self.range.itemData(index)
        self._store()

    @guarded
    def _pick_device(self, device: str) -> None:
        self.settings.device = device
        self._store()

    @guarded
    def _pick_scheduler(self) -> None:
        self.settings.scheduler = self.scheduler.text().strip()
        self._store()

    @guarded
    def _pick_movie(self, index: int) -> None:
        self.settings.movie = self.movie.itemData(index) or ""
        self._store()

    @guarded
    def box_from_selection(self) -> None:
        doc = self._need_doc()
        box = adapter.selection_box(doc)
        self.settings.box_from = "selection"
        self.editor.set_face_box(box)
        self.show_message(f"face box {box[2]}×{box[3]} at {box[0]}, {box[1]} (from the selection)")

    @guarded
    def box_automatic(self) -> None:
        self.settings.box_from = "auto"
        self.editor.set_face_box(None)
        self.show_message("the face box will be detected when rendering")

    def _need_doc(self):
        if self.kdoc is None:
            raise KeyfaceError("no document: open or create one first")
        return self.kdoc

    # rendering -------------------------------------------------------------------------------------------------------
    @property
    def rendering(self) -> bool:
        return self.worker is not None

    @property
    def busy(self) -> bool:
        return self.worker is not None or self.adapt_worker is not None

    def source_node(self, doc):
        node = adapter.find_node(doc, self.settings.layer) if self.settings.layer else doc.activeNode()
        if self.settings.layer and node is None:
            raise KeyfaceError("the chosen layer no longer exists: pick another")
        return node

    @guarded
    def render(self) -> None:
        """Render the keyed range of the chosen layer into a new animated layer (in the background)."""
        if self.busy:
            raise KeyfaceError("a render or an adaptation is already running")
        doc = self._need_doc()
        plan = adapter.plan_render(doc, self.source_node(doc), self.editor, self.settings)
        self.plan, self._plan_doc = plan, _doc_key(doc)
        self.worker = RenderWorker(plan.scene, plan.out_dir, plan.frames, "png", self.settings.device, self,
                                   source=plan.source, scheduler=self.settings.scheduler or None)
        self.worker.progress.connect(self._progress)
        self.worker.finished.connect(self._finished)
        self.worker.failed.connect(self._failed)
        self.progress.setRange(0, len(plan.frames))
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.render_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.show_message(f"rendering frames {plan.first}–{plan.last} of {plan.layer_name!r}…")
        self.worker.start()

    @guarded
    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.show_message("cancelling after the current frames…")
        if self.adapt_worker is not None:
            self.adapt_worker.cancel()
            self.show_message("cancelling the adaptation (fine-tuning done so far is kept)…")

    def _done(self) -> None:
        self.worker = self.adapt_worker = None
        self.progress.setVisible(False)
        self.render_button.setEnabled(True)
        self.adapt_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    # adaptation ------------------------------------------------------------------------------------------------------
    @guarded
    def adapt(self) -> None:
        """Adapt the picked model (or the first adaptable one) to the chosen layer's character, in the background."""
        from keyface.core.adapt import adaptable_models, teacher_models

        if self.busy:
            raise KeyfaceError("a render or an adaptation is already running")
        doc = self._need_doc()
        models = [m.id for m in adaptable_models()]
        teachers = [m.id for m in teacher_models()]
        if not models or not teachers:
            raise KeyfaceError("adaptation needs an adaptable model (atw-au17, cptnet-pose5) and a teacher (THA3: run "
                               "bin/setup)")
        model = self.editor.model_id if self.editor.model_id in models else models[0]
        image = adapter.read_layer(doc, self.source_node(doc))
        out = adapter.adapt_folder(doc, model)
        self.adapt_worker = AdaptWorker(model, image, str(out), self.editor.face_box, teachers[0],
                                        self.adapt_minutes.value(), self.settings.device, self,
                                        source_name=Path(doc.fileName()).name or "untitled")
        self.adapt_worker.progress.connect(self._adapt_progress)
        self.adapt_worker.finished.connect(self._adapt_finished)
        self.adapt_worker.failed.connect(self._failed)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.render_button.setEnabled(False)
        self.adapt_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.show_message(f"adapting {model} to this layer with {teachers[0]} "
                          f"({self.adapt_minutes.value():g} min)…")
        self.adapt_worker.start()

    @guarded
    def _adapt_progress(self, phase: str, done: float, total: float) -> None:
        self.progress.setValue(int(1000 * done / max(total, 1e-9)))
        what = {"render": "the teacher renders this character", "fit": "fine-tuning", "evaluate": "measuring"}
        self.show_message(f"adapting: {what.get(phase, phase)}…")

    @guarded
    def _adapt_finished(self, model_id: str, record) -> None:
        self._done()
        if self.models.findText(model_id) < 0:
            self.models.addItem(model_id)
        self.models.setCurrentText(model_id)
        e = record["evaluation"]
        self.show_message(f"{model_id}: PSNR against {record['teacher']} {e['adapted']['psnr_vs_teacher']:.1f} dB "
                          f"(before {e['base']['psnr_vs_teacher']:.1f} dB), {e['speedup']:.0f}× its speed")
        self.adaptFinished.emit(model_id)

    @guarded
    def _progress(self, done: int, total: int) -> None:
        self.progress.setValue(done)
        self.show_message(f"rendering… {done} of {total} frames")

    @guarded
    def _finished(self, _written: int) -> None:
        worker, plan = self.worker, self.plan
        self._done()
        if worker.cancelled:
            self.show_message("render cancelled; finished frames are kept — Render again to continue")
            return
        doc = self._open_document(self._plan_doc)
        if doc is None:
            raise KeyfaceError("the document was closed during the render; nothing was added")
        try:
            movie = adapter.export_movie(doc, plan, self.settings.movie) if self.settings.movie else None
            layer = adapter.import_frames(doc, plan)
        except KeyfaceError as exc:
            self.renderFailed.emit(str(exc))
            raise
        self.show_message(f"added animated layer {layer.name()!r} ({len(plan.frames)} frames)"
                          + (f" and wrote {movie.name}" if movie else ""))
        self.renderFinished.emit(layer.name())

    def _failed(self, msg: str) -> None:
        self._done()
        self.show_message(msg, error=True)
        self.renderFailed.emit(msg)

    def _open_document(self, key):
        for d in self.app.documents():
            if _doc_key(d) == key:
                return d
        return None

    def shutdown(self) -> None:
        self.timer.stop()
        for worker in (self.worker, self.adapt_worker):
            if worker is not None:
                worker.cancel()
                worker.wait(10)

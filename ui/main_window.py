"""The keyface editor window: canvas, model picker, parameter panel, dope sheet + curve view, transport, render
dialog. Errors are shown in the window (status bar / message boxes), never as a crash."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtWidgets import (
    QAction,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from keyface.core.errors import KeyfaceError
from keyface.core.models import available_models
from keyface.core.video import MOVIE_FORMATS

from .canvas import Canvas, to_qimage
from .document import EditorDocument
from .params import ParameterPanel
from .timeline_view import CurveView, DopeSheet
from .workers import AdaptWorker, MotionWorker, PreviewEngine, RenderWorker

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.tif *.tiff)"
SCENE_FILTER = "keyface scenes (*.json)"


def _settings():
    """The editor's own settings (the render dialog's cluster address), kept between sessions."""
    from PyQt5.QtCore import QSettings

    return QSettings("keyface", "editor")


class WorkerDialog(QDialog):
    """A dialog that runs one background job (a worker with ``progress``, ``finished``, ``failed``, ``cancel``): the
    progress bar, the status line, the start and cancel buttons, shared by the render and motion dialogs."""

    def _finish_form(self, form: QFormLayout, start_text: str) -> None:
        self.worker = None
        self.bar = QProgressBar()
        form.addRow(self.bar)
        form.addRow(self.status)
        self.buttons = QDialogButtonBox()
        self.start_button = self.buttons.addButton(start_text, QDialogButtonBox.AcceptRole)
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.Cancel)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        form.addRow(self.buttons)

    def _run(self, worker, status: str) -> None:
        self.worker = worker
        worker.progress.connect(self._progress)
        worker.finished.connect(self._finished)
        worker.failed.connect(self._failed)
        self.start_button.setEnabled(False)
        self.status.setText(status)
        worker.start()

    def _done(self, status: str) -> None:
        self.status.setText(status)
        self.start_button.setEnabled(True)
        self.worker = None

    def _progress(self, done, total):
        self.bar.setMaximum(max(1, total))
        self.bar.setValue(done)

    def _failed(self, msg):
        self._done(msg)

    def cancel(self):
        if self.worker is not None:
            self.worker.cancel()
            self.status.setText("cancelling…")
        else:
            self.reject()


class RenderDialog(WorkerDialog):
    """Folder, format, range; progress bar and cancel; renders through :func:`keyface.core.pipeline.render_scene`."""

    def __init__(self, doc: EditorDocument, device: str = "cpu", parent=None):
        super().__init__(parent)
        self.setWindowTitle("Render")
        self.doc, self.device, self.worker = doc, device, None
        form = QFormLayout(self)
        default = (doc.scene_path.parent if doc.scene_path else doc.source_path.parent) / "frames"
        self.folder = QLineEdit(str(default))
        browse = QPushButton("…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder)
        row.addWidget(browse)
        form.addRow("Folder", row)
        self.format = QComboBox()
        self.format.addItems(["png", "tiff", "exr", *MOVIE_FORMATS])
        self.format.setCurrentText(doc.output.format)
        self.format.setToolTip("png/tiff/exr: one file per frame in the folder (rendering again resumes); "
                               "mp4/mov/webm/gif: one movie named after the folder (mov and webm keep alpha)")
        form.addRow("Format", self.format)
        self.first, self.last = QSpinBox(), QSpinBox()
        for s, v in ((self.first, doc.frame_range[0]), (self.last, doc.frame_range[1])):
            s.setRange(doc.frame_range[0], doc.frame_range[1])
            s.setValue(v)
        rr = QHBoxLayout()
        rr.addWidget(self.first)
        rr.addWidget(QLabel("to"))
        rr.addWidget(self.last)
        form.addRow("Frames", rr)
        self.scheduler = QLineEdit(_settings().value("render/scheduler", "", str))
        self.scheduler.setPlaceholderText("off: render on this machine")
        self.scheduler.setToolTip("a Dask scheduler's address (tcp://HOST:8786): image frames render on that cluster "
                                  "and come back here (needs keyface[cluster]); movies always render here")
        form.addRow("Cluster", self.scheduler)
        self.status = QLabel("")
        self._finish_form(form, "Render")

    def _browse(self):
        d = QFileDialog.getExistingDirectory(self, "Render into", self.folder.text())
        if d:
            self.folder.setText(d)

    def start(self):
        movie = self.format.currentText() in MOVIE_FORMATS
        try:
            scene = self.doc.to_scene()
            out = Path(self.folder.text())
            (out.parent if movie else out).mkdir(parents=True, exist_ok=True)
        except (KeyfaceError, OSError) as exc:
            self.status.setText(str(exc))
            return
        if self.last.value() < self.first.value():
            self.status.setText("the last frame is before the first")
            return
        frames = range(self.first.value(), self.last.value() + 1)
        scheduler = self.scheduler.text().strip()
        _settings().setValue("render/scheduler", scheduler)
        self._run(RenderWorker(scene, out, frames, self.format.currentText(), self.device, self,
                               scheduler=scheduler or None), "rendering…")

    def _finished(self, n):
        if self.format.currentText() in MOVIE_FORMATS:
            self._done("done: the movie is written" if n else "cancelled: no movie was written")
        else:
            self._done(f"done: {n} frames written" if self.bar.value() >= self.bar.maximum()
                       else f"cancelled after {n} frames (rendering again resumes)")


class MotionDialog(WorkerDialog):
    """*Import motion from video…*: a reference clip (a movie or a folder of frames) → its head pose and expression as
    reduced keys of the document (:mod:`keyface.core.motion`), with progress and cancel."""

    def __init__(self, doc: EditorDocument, device: str = "cpu", parent=None):
        super().__init__(parent)
        self.setWindowTitle("Import motion from video")
        self.doc, self.device, self.report = doc, device, None
        form = QFormLayout(self)
        self.reference = QLineEdit()
        self.reference.setPlaceholderText("a movie (mp4, mov, webm, gif) or a folder of frames")
        movie, folder = QPushButton("Movie…"), QPushButton("Folder…")
        movie.clicked.connect(self._browse_movie)
        folder.clicked.connect(self._browse_folder)
        row = QHBoxLayout()
        for w in (self.reference, movie, folder):
            row.addWidget(w)
        form.addRow("Reference", row)
        self.model = QComboBox()
        self.model.addItems([m.id for m in available_models() if m.schema_name == "kp"] or ["stylemap-kp"])
        self.model.setToolTip("the model that reads the reference's keypoints, head pose and expression")
        form.addRow("Read with", self.model)
        self.tolerance = QDoubleSpinBox()
        self.tolerance.setRange(0.1, 10.0)
        self.tolerance.setValue(0.5)
        self.tolerance.setSuffix(" % of range")
        self.tolerance.setToolTip("the largest error of the reduced curves: higher, fewer keys")
        form.addRow("Tolerance", self.tolerance)
        self.smooth = QDoubleSpinBox()
        self.smooth.setRange(0.0, 10.0)
        self.smooth.setValue(1.0)
        self.smooth.setSuffix(" frames")
        form.addRow("Smoothing", self.smooth)
        self.status = QLabel(f"keys replace the {doc.schema.name} channels they key, from frame {doc.frame_range[0]}")
        self._finish_form(form, "Import")

    def _browse_movie(self):
        path, _ = QFileDialog.getOpenFileName(self, "Reference movie", "", "Movies (*.mp4 *.mov *.webm *.gif *.mkv)")
        if path:
            self.reference.setText(path)

    def _browse_folder(self):
        path = QFileDialog.getExistingDirectory(self, "Folder of reference frames")
        if path:
            self.reference.setText(path)

    def start(self):
        if not self.reference.text().strip():
            self.status.setText("choose a reference movie or folder")
            return
        self._run(MotionWorker(self.reference.text().strip(), self.model.currentText(), self.doc.schema.name,
                               self.tolerance.value() / 100, self.smooth.value(), self.device, self),
                  "reading the reference…")

    def _finished(self, timeline, report):
        try:
            self.doc.import_motion(timeline, report["frames"])
        except KeyfaceError as exc:
            self._failed(str(exc))
            return
        self.report = report
        self._done(f"imported {report['keys']} keys on {report['channels_keyed']} channels for {report['frames']} "
                   f"frames (largest error {100 * report['max_error_fraction']:.2f} % of a channel's range)")


class AdaptDialog(WorkerDialog):
    """*Adapt to this character…*: fine-tune a copy of a fast model on a teacher's (THA3's) renders of the open image
    (:mod:`keyface.core.adapt`), with progress per phase and cancel; the result is added to the model picker."""

    PHASES = {"render": "the teacher renders this character", "fit": "fine-tuning", "evaluate": "measuring"}

    def __init__(self, doc: EditorDocument, device: str = "cpu", parent=None, on_model=None):
        from keyface.core.adapt import adaptable_models, teacher_models

        super().__init__(parent)
        self.setWindowTitle("Adapt to this character")
        self.doc, self.device, self.on_model, self.record = doc, device, on_model, None
        form = QFormLayout(self)
        self.model = QComboBox()
        self.model.addItems([m.id for m in adaptable_models()])
        if doc.model_id and self.model.findText(doc.model_id) >= 0:
            self.model.setCurrentText(doc.model_id)
        form.addRow("Model", self.model)
        self.teacher = QComboBox()
        self.teacher.addItems([m.id for m in teacher_models()])
        self.teacher.setToolTip("the slow general poser whose renders of this character the copy learns")
        form.addRow("Teacher", self.teacher)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(1.0, 240.0)
        self.minutes.setValue(10.0)
        self.minutes.setSuffix(" min")
        self.minutes.setToolTip("wall time: the teacher's renders first, then fine-tuning")
        form.addRow("Time", self.minutes)
        stem = doc.source_path.stem if doc.source_path else "character"
        base = doc.source_path.parent if doc.source_path else Path.cwd()
        def default_folder():  # beside the image, named after the model (an adapted model's id: its family)
            return str(base / f"{stem}-{self.model.currentText().split(':')[0] or 'model'}-adapted")

        self.folder = QLineEdit(default_folder())
        shown = [self.folder.text()]

        def follow_model(_):  # the default name follows the model picked, unless the user typed another
            if self.folder.text() == shown[0]:
                self.folder.setText(default_folder())
            shown[0] = default_folder()

        self.model.currentTextChanged.connect(follow_model)
        form.addRow("Save as", self.folder)
        self.status = QLabel("" if self.model.count() and self.teacher.count() else
                             "needs an adaptable model and a teacher (install THA3: bin/setup)")
        self._finish_form(form, "Adapt")
        self.start_button.setEnabled(bool(self.model.count() and self.teacher.count()))

    def start(self):
        folder = self.folder.text().strip()
        if not folder:
            self.status.setText("choose a folder for the adapted model")
            return
        name = self.doc.source_path.name if self.doc.source_path else ""
        self._run(AdaptWorker(self.model.currentText(), self.doc.image, folder, self.doc.face_box,
                              self.teacher.currentText(), self.minutes.value(), self.device, self, source_name=name),
                  "starting…")

    def _progress(self, phase, done, total):
        self.bar.setMaximum(1000)
        self.bar.setValue(int(1000 * done / max(total, 1e-9)))
        self.status.setText(self.PHASES.get(phase, phase) + "…")

    def _finished(self, model_id, record):
        self.record = record
        e = record["evaluation"]
        if self.on_model is not None:
            self.on_model(model_id)
        self._done(f"{model_id}: head-region PSNR against {record['teacher']} {e['adapted']['psnr_vs_teacher']:.1f} dB "
                   f"(before: {e['base']['psnr_vs_teacher']:.1f} dB), {e['speedup']:.0f}× its speed"
                   + (" — cancelled early" if record["cancelled"] else ""))


class MainWindow(QMainWindow):
    def __init__(self, device: str = "cpu"):
        super().__init__()
        self.setWindowTitle("keyface")
        self.resize(1400, 900)
        self.doc = EditorDocument(self)
        self.device = device
        self.preview = PreviewEngine(device, self)
        self.last_preview = None
        self.preview_boxes = None  # (model, face box, working region, fitted landmarks or None) of the last preview
        self.last_error = None
        self.canvas = Canvas()
        self.setCentralWidget(self.canvas)

        self.models = QComboBox()
        self.models.setObjectName("model_picker")
        for m in available_models():
            self.models.addItem(m.id)
        self.models.currentTextChanged.connect(self._pick_model)
        self.params = ParameterPanel()
        side = QWidget()
        lay = QVBoxLayout(side)
        lay.addWidget(QLabel("Model"))
        lay.addWidget(self.models)
        lay.addWidget(self.params)
        dock = QDockWidget("Parameters", self)
        dock.setObjectName("parameters_dock")
        dock.setWidget(side)
        side.setMinimumWidth(420)
        self.addDockWidget(Qt.RightDockWidgetArea, dock)

        self.dope = DopeSheet(self.doc)
        self.curve = CurveView(self.doc)
        self.frame_spin = QSpinBox()
        self.play_button = QPushButton("▶")
        self.play_button.setCheckable(True)
        transport = QHBoxLayout()
        for w in (QLabel("Frame"), self.frame_spin, self.play_button):
            transport.addWidget(w)
        transport.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.dope)
        split = QSplitter(Qt.Horizontal)
        split.addWidget(scroll)
        split.addWidget(self.curve)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([800, 500])
        tl = QWidget()
        tlay = QVBoxLayout(tl)
        tlay.addLayout(transport)
        tlay.addWidget(split)
        tdock = QDockWidget("Timeline", self)
        tdock.setObjectName("timeline_dock")
        tdock.setWidget(tl)
        tl.setMinimumHeight(280)
        self.addDockWidget(Qt.BottomDockWidgetArea, tdock)

        self.timer = QTimer(self)
        self.timer.timeout.connect(self._tick)
        self._menus()
        self._connect()
        self.params.set_schema(self.doc.schema)
        self._sync_frame_spin()
        if sys.excepthook is sys.__excepthook__:  # PyQt5 aborts on an uncaught error in a slot: show it instead
            sys.excepthook = self._uncaught

    def _uncaught(self, kind, value, tb):
        traceback.print_exception(kind, value, tb)
        self.show_error(f"internal error: {value!r} (details on the console)")

    # setup ---------------------------------------------------------------------------------------------------------
    def _menus(self):
        menus = {
            "&File": (("&Open image…", self.open_image_dialog, "Ctrl+O"),
                      ("Open &scene…", self.open_scene_dialog, "Ctrl+Shift+O"),
                      ("&Save scene", self.save, "Ctrl+S"), ("Save scene &as…", self.save_as, "Ctrl+Shift+S"),
                      ("&Render…", self.render_dialog, "Ctrl+R"),
                      ("Import &motion from video…", self.motion_dialog, "Ctrl+M"),
                      ("&Adapt to this character…", self.adapt_dialog, "Ctrl+Shift+A"),
                      ("&Quit", self.close, "Ctrl+Q")),
            "&View": (("&Full-resolution frame", self.full_frame, "Ctrl+F"), ("Fit &image", self.canvas.fit, "Ctrl+0")),
            "&Timeline": (("Play / pause", self.toggle_play, "Space"),
                          ("Next frame", lambda: self.step(1), "Right"),
                          ("Previous frame", lambda: self.step(-1), "Left"),
                          ("First frame", lambda: self.doc.set_frame(self.doc.frame_range[0]), "Home"),
                          ("Last frame", lambda: self.doc.set_frame(self.doc.frame_range[1]), "End"),
                          ("Insert key (keyed channels)", self.insert_keys, "I"),
                          ("Next key", lambda: self.jump_key(1), "Up"),
                          ("Previous key", lambda: self.jump_key(-1), "Down")),
        }
        for title, actions in menus.items():
            menu = self.menuBar().addMenu(title)
            for text, slot, key in actions:
                a = QAction(text, self)
                a.setShortcut(key)
                a.triggered.connect(slot)
                menu.addAction(a)

    def _connect(self):
        d = self.doc
        d.imageChanged.connect(lambda: self.canvas.set_image(d.image))
        d.boxChanged.connect(lambda: self.canvas.set_box(d.face_box))
        d.changed.connect(self._doc_changed)
        d.frameChanged.connect(self._frame_changed)
        self.canvas.boxEdited.connect(d.set_face_box)
        self.params.valueEdited.connect(self._value_edited)
        self.params.resetRequested.connect(d.reset_channel)
        self.params.resetAllRequested.connect(d.reset_all)
        self.dope.channelActivated.connect(self.curve.set_channel)
        self.dope.error.connect(self.show_error)
        self.curve.error.connect(self.show_error)
        self.frame_spin.valueChanged.connect(d.set_frame)
        self.play_button.toggled.connect(self._play)
        self.preview.ready.connect(self._preview_ready)
        self.preview.fullReady.connect(self._full_ready)
        self.preview.failed.connect(self.show_error)

    # document events -----------------------------------------------------------------------------------------------
    def _doc_changed(self):
        if self.params.schema is not self.doc.schema:
            self.params.set_schema(self.doc.schema)
        self._sync_frame_spin()
        self.params.show_values(self.doc.values_at())
        self._title()
        self.request_preview()

    def _frame_changed(self, frame):
        self.frame_spin.blockSignals(True)
        self.frame_spin.setValue(frame)
        self.frame_spin.blockSignals(False)
        self.params.show_values(self.doc.values_at())
        self.request_preview()

    def _sync_frame_spin(self):
        self.frame_spin.blockSignals(True)
        self.frame_spin.setRange(*self.doc.frame_range)
        self.frame_spin.setValue(self.doc.frame)
        self.frame_spin.blockSignals(False)

    def _title(self):
        name = (self.doc.scene_path or self.doc.source_path or Path("untitled")).name
        self.setWindowTitle(f"keyface — {name}{' *' if self.doc.dirty else ''}")

    def _value_edited(self, channel, value):
        try:
            self.doc.set_value(channel, value)
        except KeyfaceError as exc:
            self.show_error(str(exc))

    def _pick_model(self, model_id):
        if model_id and model_id != self.doc.model_id:
            try:
                self.doc.set_model(model_id)
            except KeyfaceError as exc:
                self.show_error(str(exc))

    # preview -------------------------------------------------------------------------------------------------------
    def request_preview(self, full: bool = False):
        d = self.doc
        if d.image is None:
            return
        self.preview.request(d.image, d.model_id, d.face_box, d.frame, d.values_at(), full=full)

    def _preview_ready(self, frame, img, boxes):
        """A preview: drawn into the model's working region; the face box it used is shown (an automatic one is shown,
        not stored: the document keeps only a box the artist drew, so each model derives its own region from it).
        A preview of a model the document no longer uses is dropped."""
        model_id, face, working, marks = boxes
        if model_id != self.doc.model_id:
            return
        self.preview_boxes = boxes
        self.canvas.show_landmarks(marks)  # a fitted face model's landmarks (None: hidden)
        if self.doc.face_box is None:
            self.canvas.set_box(tuple(face))
        if frame == self.doc.frame:
            self.last_preview = (frame, img)
            self.canvas.show_preview(img, tuple(working))

    def full_frame(self):
        self.request_preview(full=True)
        self.statusBar().showMessage("computing the full-resolution frame…", 3000)

    def _full_ready(self, frame, img):
        dlg = QDialog(self)
        dlg.setWindowTitle(f"Frame {frame} at full resolution ({img.shape[1]}×{img.shape[0]})")
        lab = QLabel()
        from PyQt5.QtGui import QPixmap

        lab.setPixmap(QPixmap.fromImage(to_qimage(img)))
        sc = QScrollArea()
        sc.setWidget(lab)
        QVBoxLayout(dlg).addWidget(sc)
        dlg.resize(1000, 800)
        self.full_dialog = dlg
        dlg.show()

    # transport -----------------------------------------------------------------------------------------------------
    def toggle_play(self):
        self.play_button.toggle()

    def _play(self, on):
        if on:
            self.timer.start(int(1000 / max(1e-3, self.doc.fps)))
        else:
            self.timer.stop()
        self.play_button.setText("⏸" if on else "▶")

    def _tick(self):
        first, last = self.doc.frame_range
        self.doc.set_frame(first if self.doc.frame >= last else self.doc.frame + 1)

    def step(self, n):
        self.doc.set_frame(self.doc.frame + n)

    def insert_keys(self):
        """Key the current frame on every channel that has keys (or the curve view's channel), at their values."""
        channels = [c for c in self.doc.schema.names if self.doc.keys(c)] or (
            [self.curve.channel] if self.curve.channel else [])
        for c in channels:
            self.doc.insert_key(c, self.doc.frame)

    def jump_key(self, direction):
        frames = self.doc.timeline.key_frames()
        nxt = [f for f in frames if (f - self.doc.frame) * direction > 0]
        if nxt:
            self.doc.set_frame(min(nxt) if direction > 0 else max(nxt))

    # files ---------------------------------------------------------------------------------------------------------
    def open_path(self, path) -> bool:
        path = Path(path)
        if not self.maybe_save():
            return False
        try:
            if path.suffix.lower() == ".json":
                self.doc.open_scene(path)
            else:
                self.doc.open_image(path)
        except KeyfaceError as exc:
            self.show_error(str(exc), dialog=True)
            return False
        if self.doc.model_id:
            self.models.blockSignals(True)
            self.models.setCurrentText(self.doc.model_id)
            self.models.blockSignals(False)
        self.canvas.set_box(self.doc.face_box)
        self._doc_changed()
        return True

    def open_image_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open image", "", IMAGE_FILTER)
        if path:
            self.open_path(path)

    def open_scene_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open scene", "", SCENE_FILTER)
        if path:
            self.open_path(path)

    def save(self) -> bool:
        if self.doc.scene_path is None:
            return self.save_as()
        return self._save_to(self.doc.scene_path)

    def save_as(self) -> bool:
        start = str((self.doc.source_path or Path("scene")).with_suffix(".json"))
        path, _ = QFileDialog.getSaveFileName(self, "Save scene", start, SCENE_FILTER)
        return self._save_to(Path(path)) if path else False

    def _save_to(self, path) -> bool:
        try:
            self.doc.save(path)
        except (KeyfaceError, OSError) as exc:
            self.show_error(str(exc), dialog=True)
            return False
        self._title()
        self.statusBar().showMessage(f"saved {path}", 3000)
        return True

    def maybe_save(self) -> bool:
        """Unsaved-changes prompt; False when the user cancels."""
        if not self.doc.dirty:
            return True
        answer = QMessageBox.question(self, "keyface", "Save the changes to this scene?",
                                      QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel)
        if answer == QMessageBox.Save:
            return self.save()
        return answer == QMessageBox.Discard

    def render_dialog(self):
        if self.doc.image is None or self.doc.model_id is None:
            self.show_error("open an image and pick a model first", dialog=True)
            return
        self.render_window = RenderDialog(self.doc, self.device, self)
        self.render_window.show()

    def motion_dialog(self):
        if self.doc.image is None:
            self.show_error("open an image first: the motion becomes its keys", dialog=True)
            return
        self.motion_window = MotionDialog(self.doc, self.device, self)
        self.motion_window.show()

    def adapt_dialog(self):
        if self.doc.image is None:
            self.show_error("open an image first: the model is adapted to its character", dialog=True)
            return
        self.adapt_window = AdaptDialog(self.doc, self.device, self, on_model=self.add_model)
        self.adapt_window.show()

    def add_model(self, model_id: str) -> None:
        """A model made in this session (an adaptation): listed in the picker and picked."""
        if self.models.findText(model_id) < 0:
            self.models.addItem(model_id)
        self.models.setCurrentText(model_id)

    def show_error(self, msg, dialog: bool = False):
        """Status bar, and for errors that stop an action a message box (window-modal, never blocking the loop)."""
        self.statusBar().showMessage(msg, 10000)
        self.last_error = msg
        if dialog:
            box = QMessageBox(QMessageBox.Warning, "keyface", msg, QMessageBox.Ok, self)
            box.open()
            self.error_box = box

    def closeEvent(self, e):
        if self.maybe_save():
            self.timer.stop()
            self.preview.close()
            if sys.excepthook == self._uncaught:
                sys.excepthook = sys.__excepthook__
            e.accept()
        else:
            e.ignore()

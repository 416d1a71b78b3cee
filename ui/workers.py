"""Work off the UI thread: generator previews (latest request wins, results cached per frame and values) and renders
(progress, cancel). Signals are emitted from a worker thread and delivered queued to the UI thread."""

from __future__ import annotations

import threading

import numpy as np
from PyQt5.QtCore import QObject, pyqtSignal

from keyface.core.errors import KeyfaceError
from keyface.core.pixels import to_unit, with_alpha
from keyface.core.video import MOVIE_FORMATS


class PreviewEngine(QObject):
    ready = pyqtSignal(int, object, object)  # frame, low-res result (h, w, C) float [0, 1], (model, face box, region,
                                             # the fitted face's landmarks in document pixels or None)
    fullReady = pyqtSignal(int, object)   # frame, full-resolution frame (source depth)
    failed = pyqtSignal(str)

    def __init__(self, device: str = "cpu", parent=None):
        super().__init__(parent)
        self.device = device
        self.cache: dict = {}
        self._job = None
        self._job_key = None
        self._pending = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="keyface-preview", daemon=True)
        self._thread.start()

    def request(self, image, model_id, face_box, frame: int, values, full: bool = False) -> None:
        """Ask for the preview of ``frame`` (cached results are returned at once). ``face_box`` None: the model's
        default (the detected box; a square image for a THA model: its frame), reported with the result."""
        if image is None or model_id is None:
            return
        face_box = None if face_box is None else tuple(face_box)
        key = (id(image), model_id, face_box, np.asarray(values, np.float32).round(4).tobytes())
        if not full and key in self.cache:
            self.ready.emit(frame, *self.cache[key])
            return
        with self._cond:
            self._pending = (image, model_id, face_box, frame, np.asarray(values, np.float32), key, full)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from keyface.core.pipeline import FrameJob

        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                image, model_id, box, frame, values, key, full = self._pending
                self._pending = None
            try:
                job_key = (id(image), model_id, box)
                if job_key != self._job_key:
                    self._job = FrameJob.prepare(image, model_id, box, self.device)
                    self._job_key = job_key
                if full:
                    self.fullReady.emit(frame, self._job.frames(values[None])[0])
                    continue
                low, _ = self._job.low_results(values[None])
                marks = None
                if self._job.runtime.has_fit:  # a fitted face model (F³A's 3DMM): show its landmarks
                    grid_low = with_alpha(self._job.lifter.low_input())
                    marks = self._job.grid_to_document(self._job.runtime.fit_landmarks(grid_low))
                boxes = (model_id, self._job.face_box, self._job.box, marks)
                if len(self.cache) > 256:
                    self.cache.clear()
                self.cache[key] = (to_unit(low[0]), boxes)
                self.ready.emit(frame, *self.cache[key])
            except KeyfaceError as exc:
                self.failed.emit(str(exc))
            except Exception as exc:  # a preview must never take the editor down
                self.failed.emit(f"preview failed: {exc}")


class ThreadWorker(QObject):
    """A background job on its own thread: ``start``, ``cancel`` (a flag the job polls), ``cancelled``, ``wait``.
    Each subclass defines its signals and its job, ``_run`` (what ``start`` runs on the thread); signals are delivered
    queued to the UI thread."""

    name = "keyface-worker"

    def __init__(self, parent=None):
        super().__init__(parent)
        self._cancel = threading.Event()
        self._thread = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout=None) -> None:
        if self._thread:
            self._thread.join(timeout)


class RenderWorker(ThreadWorker):
    name = "keyface-render"
    progress = pyqtSignal(int, int)
    finished = pyqtSignal(int)     # frames written
    failed = pyqtSignal(str)

    def __init__(self, scene, out_dir, frames, fmt, device="cpu", parent=None, source=None, scheduler=None):
        super().__init__(parent)
        self.args = (scene, out_dir, frames, fmt, device, source)
        self.scheduler = scheduler or None  # a Dask scheduler's address: image frames render on that cluster

    def _run(self) -> None:
        from keyface.core.pipeline import render_scene

        scene, out_dir, frames, fmt, device, source = self.args
        try:
            if self.scheduler and fmt not in MOVIE_FORMATS:  # movies are encoded here, in one process
                self.finished.emit(self._run_on_cluster())
                return
            written = render_scene(scene, out_dir, frames=frames, fmt=fmt, device=device,
                                   resume=fmt not in MOVIE_FORMATS,
                                   progress=lambda d, t: self.progress.emit(d, t), should_stop=self._cancel.is_set,
                                   source=source)
            self.finished.emit(len(written))
        except KeyfaceError as exc:
            self.failed.emit(str(exc))
        except MemoryError:
            self.failed.emit("out of memory: close other documents or render a smaller face box")
        except Exception as exc:
            self.failed.emit(f"render failed: {exc}")

    def _run_on_cluster(self) -> int:
        """The render on the Dask cluster at :attr:`scheduler`; frames come back here (the workers need not see this
        machine's folders). Returns the frames written (cancel: those so far; rendering again resumes)."""
        from keyface.core.distributed import plan_scene, render_distributed

        scene, out_dir, frames, fmt, device, source = self.args
        run = plan_scene(scene, "render", out_dir, frames, fmt, resume=True, source=source)
        try:
            render_distributed([run], scheduler=self.scheduler, device=device, gather=True,
                               progress=lambda d, t: self.progress.emit(d, t), should_stop=self._cancel.is_set)
        except KeyboardInterrupt:
            pass
        return run.written


class MotionWorker(ThreadWorker):
    """Motion from a reference clip (:mod:`keyface.core.motion`) off the UI thread: progress per frame, cancel; the
    keys come back reduced, in the document's schema."""

    name = "keyface-motion"
    progress = pyqtSignal(int, int)
    finished = pyqtSignal(object, object)  # the keys (a Timeline), the report (keys, frames, largest error)
    failed = pyqtSignal(str)

    def __init__(self, reference, model_id: str, schema: str, tolerance: float, smooth: float, device="cpu",
                 parent=None):
        super().__init__(parent)
        self.args = (reference, model_id, schema, tolerance, smooth, device)

    def _run(self) -> None:
        from keyface.core.models import get_model
        from keyface.core.motion import keys_to_scene, read_reference, reference_keys

        reference, model_id, schema, tolerance, smooth, device = self.args
        try:
            runtime = get_model(model_id).load(device)
            frames, fps = read_reference(reference)
            values = reference_keys(runtime, frames, None, smooth, lambda d, t: self.progress.emit(d, t),
                                    self._cancel.is_set)
            scene, report = keys_to_scene(values, runtime.schema, schema, tolerance, "", model_id, fps or 24.0)
            self.finished.emit(scene.timeline, {**report, "fps": fps})
        except KeyfaceError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:
            self.failed.emit(f"reading motion failed: {exc}")


class AdaptWorker(ThreadWorker):
    """Per-character adaptation (:mod:`keyface.core.adapt`) off the UI thread: progress per phase, cancel (a cancelled
    fine-tuning still saves what it learnt; a cancel while the teacher renders writes nothing)."""

    name = "keyface-adapt"
    progress = pyqtSignal(str, float, float)  # phase ("render", "fit", "evaluate"), done, total
    finished = pyqtSignal(str, object)  # the adapted model's id, the record
    failed = pyqtSignal(str)

    def __init__(self, model_id: str, image, out_dir, face_box=None, teacher: str = "tha3", minutes: float = 10.0,
                 device="cpu", parent=None, source_name: str = ""):
        super().__init__(parent)
        self.args = (model_id, image, out_dir, face_box, teacher, minutes, device, source_name)

    def _run(self) -> None:
        from keyface.core.adapt import adapt

        model_id, image, out_dir, face_box, teacher, minutes, device, source_name = self.args
        try:
            record = adapt(model_id, image, out_dir, box=face_box, teacher=teacher, minutes=minutes, device=device,
                           progress=lambda phase, done, total: self.progress.emit(phase, float(done), float(total)),
                           should_stop=self._cancel.is_set, source_name=source_name)
            self.finished.emit(record["model_id"], record)
        except KeyfaceError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:
            self.failed.emit(f"adaptation failed: {exc}")

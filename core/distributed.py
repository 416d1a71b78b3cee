"""Batch rendering on a Dask ``distributed`` cluster: many scenes, chunks of frames, no frame lost.

The client (:func:`render_distributed`) checks every scene as :func:`keyface.core.pipeline.render_scene` does, lists
the frames still to render, and cuts each scene's list into **chunks** that are whole multiples of the render path's
batch, aligned as the single-process path aligns them (``todo[i:i + batch]``): a chunk's batches are the very batches
a single process would run, so every frame is bit-identical to a single-process render (a generator's result can
depend on what else is in its batch). Each chunk is one Dask task (:func:`render_chunk`).

A worker process keeps what is expensive: the loaded generator (cached by model id, device and weights digest) and the
prepared :class:`~keyface.core.pipeline.FrameJob` of the scene's source (the ResWarp decomposition), so the chunks of a
scene that land on a worker after the first cost only their frames. Torch and OpenCV threads are set once per process
(the host's cores shared among the keyface workers on it), and a process renders one chunk at a time.

Frames are written atomically (:mod:`keyface.core.io`) under their final names, by the workers into a folder they
share with the client, or (``gather``) sent back to the client, which writes them. A worker killed mid-chunk loses
nothing: Dask runs the chunk again elsewhere; the retry skips batches whose frames are all on disk and renders the
others whole (so their frames are the same bits), writing only the missing frames. Each scene's output folder gets a
manifest (:data:`MANIFEST`: the frames done, the model's weights digest, keyface's version) that ``resume`` checks.

Movies are refused here: a movie is one stream encoded in frame order in one process (render the frames here, then
encode them, or render the movie with the single-process path).

``distributed`` is imported only by this module; without it, :func:`require` names the install command.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import KeyfaceError

MANIFEST = "keyface_manifest.json"  # one per scene's output folder
MANIFEST_VERSION = 1
INSTALL = "pip install 'keyface[cluster]' (or: pip install distributed)"
KILL_HOOK = "KEYFACE_TEST_KILL"  # tests: a worker that can rename "$KEYFACE_TEST_KILL.armed" kills itself mid-chunk
THREADS_ENV = "KEYFACE_TORCH_THREADS"  # overrides the torch/OpenCV threads a worker process uses
CHUNKS_PER_WORKER = 4  # aim for this many chunks per worker over the whole run (balance against per-task overhead)
MAX_CHUNK_BATCHES = 16  # a chunk is at most this many batches (a lost worker costs at most one chunk)


def require():
    """The ``distributed`` module, or a :class:`KeyfaceError` naming the install command."""
    try:
        import distributed
    except ImportError:
        raise KeyfaceError(f"rendering on a Dask cluster needs the 'distributed' package: {INSTALL}") from None
    return distributed


# --------------------------------------------------------------------------------------------------- weights digest

_DIGESTS: dict = {}


def weights_digest(path) -> str:
    """SHA-256 of a model's weights: the file (with its ``.json`` beside it, when there is one) or every file in a
    folder; ``"none"`` for a model without weights. Cached by path, size and modification time."""
    if path is None:
        return "none"
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
    else:
        files = [f for f in (path, path.with_suffix(".json")) if f.is_file()]
    if not files:
        raise KeyfaceError(f"weights not found: {path}")
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _DIGESTS:
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(path) if path.is_dir() else f.suffix).encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _DIGESTS[stamp] = h.hexdigest()
    return _DIGESTS[stamp]


def model_digest(model_id: str) -> str:
    from .models import get_model

    return weights_digest(get_model(model_id).weights)


# ------------------------------------------------------------------------------------------------------ worker side

_LOCK = threading.Lock()  # one chunk at a time per process (a worker started with more threads still renders serially)
_MODELS: dict = {}  # (model id, device, digest) → loaded generator
_JOBS: OrderedDict = OrderedDict()  # (source key, model, face box, mode, device, digest) → FrameJob, least recent first
MAX_JOBS = 2  # prepared sources kept per process (a 4K source's decomposition is a few hundred MB)
_threads_set = False


def _configure(threads_by_host: dict) -> int:
    """Set torch's and OpenCV's threads once per process: ``$KEYFACE_TORCH_THREADS``, else this host's cores divided
    among the keyface workers on it (from the scheduler's list of workers)."""
    global _threads_set
    import cv2
    import torch

    if not _threads_set:
        threads = int(os.environ.get(THREADS_ENV, "0") or 0)
        if threads < 1:
            share = max(1, threads_by_host.get(_host(), 1))
            threads = max(1, (os.cpu_count() or 1) // share)
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        _threads_set = True
    return torch.get_num_threads()


def _host() -> str:
    with contextlib.suppress(Exception):
        from distributed import get_worker

        return get_worker().address.rsplit(":", 1)[0]
    return "local"


def _runtime(model_id: str, device: str, digest: str):
    from .models import get_model

    info = get_model(model_id)
    here = weights_digest(info.weights)
    if here != digest:
        raise KeyfaceError(f"model {model_id}'s weights on worker {_host()} differ from the client's (digest "
                           f"{here[:12]} here, {digest[:12]} there): install the same weights on every render machine")
    key = (model_id, device, digest)
    if key not in _MODELS:
        _MODELS[key] = info.load(device)
    return _MODELS[key]


def _job(source_key: str, source: np.ndarray, scene, device: str, digest: str):
    from .pipeline import FrameJob

    key = (source_key, scene.model, tuple(scene.face_box) if scene.face_box else None, scene.output.reswarp, device,
           digest)
    if key in _JOBS:
        _JOBS.move_to_end(key)
    else:
        runtime = _runtime(scene.model, device, digest)
        _JOBS[key] = FrameJob.prepare(source, runtime, scene.face_box, device, scene.output.reswarp,
                                       scene.source_fit)
        while len(_JOBS) > MAX_JOBS:
            _JOBS.popitem(last=False)
    return _JOBS[key]


def batch_size(model_id: str, device: str, digest: str, threads_by_host: dict) -> int:
    """(A task.) Load the model on a worker (it stays cached there) and return its default batch."""
    with _LOCK:
        _configure(threads_by_host)
        return int(_runtime(model_id, device, digest).batch_size)


def _kill_hook() -> None:
    """Tests inject a worker's death here: the one process that renames ``$KEYFACE_TEST_KILL.armed`` away is killed
    (SIGKILL: no cleanup, as a crash or an out-of-memory kill)."""
    base = os.environ.get(KILL_HOOK)
    if base:
        try:
            os.rename(base + ".armed", base + ".fired")
        except OSError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def _frame_bytes(path: Path, write) -> bytes:
    """Encode a frame exactly as the writer writes it (through a private file), returning the file's bytes."""
    with tempfile.TemporaryDirectory(prefix="keyface-gather-") as tmp:
        local = Path(tmp) / path.name
        write(local)
        return local.read_bytes()


def render_chunk(scene_doc: dict, base_dir: str, source, source_key: str, frames: list, batch: int, fmt: str,
                 out_dir: str, gather: bool, device: str, digest: str, threads_by_host: dict,
                 cancel: str | None = None) -> dict:
    """(A task.) Render ``frames`` (whole batches of ``batch``, as the single-process path cuts them) and write each
    frame atomically into ``out_dir``, or return its file's bytes (``gather``). Batches whose frames are all on disk
    already (a retry after a worker died) are skipped; a batch with some of them is rendered whole and only the missing
    frames are written. Returns ``{"frames": written, "skipped": found done, "data": {frame: bytes}, "seconds": …}``."""
    from .pipeline import _render_frames, frame_name
    from .scene import scene_from_json

    t0 = time.perf_counter()
    out = Path(out_dir)
    if not gather and not out.is_dir():
        raise KeyfaceError(f"the output folder {out} is not visible on worker {_host()}: share it with every render "
                           "machine at the same path, or render with --gather")
    try:
        scene = scene_from_json(scene_doc, base_dir)
    except KeyfaceError as exc:  # e.g. the model is not installed on this worker (sent back as a plain message)
        raise KeyfaceError(f"on worker {_host()}: {exc}") from None
    stop = _cancel_check(cancel)
    written, skipped, data = [], [], {}
    with _LOCK:
        _configure(threads_by_host)
        job = _job(source_key, source, scene, device, digest)
        for i in range(0, len(frames), batch):
            if stop():
                break
            group = frames[i:i + batch]
            done = set() if gather else {f for f in group if (out / frame_name(f, fmt)).exists()}
            if len(done) == len(group):
                skipped.extend(group)
                continue

            def write(f, img, done=done):
                if f in done:
                    return
                path = out / frame_name(f, fmt)
                if gather:
                    data[f] = _frame_bytes(path, lambda p: write_frame(scene, fmt, p, img))
                else:
                    write_frame(scene, fmt, path, img)
                written.append(f)
                if len(written) == 1:
                    _kill_hook()

            _render_frames(scene, job, group, batch, lambda: False, write, None)
            skipped.extend(sorted(done))
    return {"frames": written, "skipped": skipped, "data": data, "seconds": time.perf_counter() - t0,
            "worker": _host()}


def write_frame(scene, fmt: str, path: Path, img: np.ndarray) -> None:
    """One frame as :func:`~keyface.core.pipeline.render_scene` writes it (the scene's bit depth; EXR half or float)."""
    from .imageio import write_image
    from .pipeline import BIT_DEPTHS
    from .pixels import convert_depth

    if fmt == "exr":
        write_image(path, img, exr_bits=scene.output.bit_depth if scene.output.bit_depth in (16, 32) else 16)
    else:
        write_image(path, convert_depth(img, BIT_DEPTHS.get(scene.output.bit_depth, img.dtype)))


def _cancel_check(name: str | None) -> Callable[[], bool]:
    """``stop()`` for a worker: true once the client set the run's cancel event (a scheduler round trip per batch)."""
    if not name:
        return lambda: False
    try:
        from distributed import Event

        event = Event(name)
    except Exception:  # no client in this worker: nothing to poll, the client cancels the tasks instead
        return lambda: False

    def stop():
        try:
            return event.is_set()
        except Exception:
            return False

    return stop


# ------------------------------------------------------------------------------------------------------ client side


@dataclass
class SceneRun:
    """One scene of a distributed render: what is done, what is left, and how it went."""

    name: str
    scene: object
    out: Path
    fmt: str
    frames: list
    todo: list
    source: np.ndarray | None = None
    digest: str = ""
    batch: int = 0
    chunks: list = field(default_factory=list)  # lists of frames
    done: set = field(default_factory=set)  # frames on disk (skipped, or written by this run)
    written: int = 0
    skipped: int = 0  # frames found finished at the start
    in_manifest: int = 0  # of those, listed in the manifest with the same weights
    retried: int = 0  # chunk attempts lost to a dead worker and run again
    started: float = 0.0
    seconds: float = 0.0

    @property
    def manifest(self) -> Path:
        return self.out / MANIFEST


def _ranges(frames) -> list:
    """[[first, last], …] runs of consecutive frames (a manifest stays small for long clips)."""
    runs: list = []
    for f in sorted(frames):
        if runs and f == runs[-1][1] + 1:
            runs[-1][1] = f
        else:
            runs.append([f, f])
    return runs


def read_manifest(path: Path) -> dict | None:
    """A scene folder's manifest, or None when there is none; a damaged one is an error (it is never overwritten
    silently)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyfaceError(f"cannot read the render manifest {path}: {exc}; move it away to render here") from None
    if not isinstance(doc, dict) or doc.get("keyface_manifest") != MANIFEST_VERSION:
        raise KeyfaceError(f"{path} is not a keyface render manifest of version {MANIFEST_VERSION}")
    return doc


def manifest_frames(doc: dict | None) -> set:
    return {f for a, b in (doc or {}).get("frames_done", []) for f in range(a, b + 1)}


def write_manifest(run: SceneRun) -> None:
    from . import __version__
    from .io import atomic_write_text

    doc = {"keyface_manifest": MANIFEST_VERSION, "keyface_version": __version__, "scene": run.name,
           "model": run.scene.model, "weights_sha256": run.digest, "format": run.fmt,
           "bit_depth": run.scene.output.bit_depth, "frames_done": _ranges(run.done),
           "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(run.manifest, json.dumps(doc, indent=1) + "\n")


def plan_scene(scene, name: str, out=None, frames=None, fmt: str | None = None, resume: bool = False,
               source: np.ndarray | None = None) -> SceneRun:
    """Check a scene as the single-process path does and list what is left to render (nothing is written)."""
    from .pipeline import MAX_FRAMES, frame_name
    from .scene import FORMATS, check_source
    from .video import MOVIE_FORMATS

    if scene.model is None:
        raise KeyfaceError(f"{name}: the scene names no model (set \"model\"; `keyface models` lists them)")
    fmt = fmt or scene.output.format
    if fmt in MOVIE_FORMATS:
        raise KeyfaceError(f"{name}: a {fmt} movie is one stream encoded in frame order by one process, so it is not "
                           "rendered on a cluster: render the frames (--format png) on the cluster, or the movie "
                           "without --workers/--scheduler")
    if fmt not in FORMATS:
        raise KeyfaceError(f"format {fmt!r} cannot be written here (use {', '.join(FORMATS)})")
    if source is None:
        check_source(scene)
    frames = list(scene.frames if frames is None else frames)
    if len(frames) > MAX_FRAMES:
        raise KeyfaceError(f"{len(frames):,} frames asked for (more than {MAX_FRAMES:,}): check the frame range")
    out = Path(out) if out is not None else scene.output_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyfaceError(f"cannot make the output folder {out}: {exc.strerror or exc}") from None
    run = SceneRun(name, scene, out, fmt, frames, [], source)
    run.digest = model_digest(scene.model)
    have = {f for f in frames if (out / frame_name(f, fmt)).exists()}
    if have and not resume:
        first = min(have)
        raise KeyfaceError(f"{out / frame_name(first, fmt)} exists: use --resume to keep finished frames, or another "
                           "folder")
    manifest = read_manifest(run.manifest)
    if manifest is not None and resume and have:
        if manifest.get("model") != scene.model or manifest.get("weights_sha256") != run.digest:
            raise KeyfaceError(f"the frames in {out} were rendered by {manifest.get('model')} (weights "
                               f"{str(manifest.get('weights_sha256'))[:12]}), this scene renders with {scene.model} "
                               f"(weights {run.digest[:12]}): resuming would mix two models in one clip; render into "
                               "another folder")
        run.in_manifest = len(have & manifest_frames(manifest))
    run.done = set(have) | (manifest_frames(manifest) - set(frames) if manifest else set())
    run.todo = [f for f in frames if f not in have]
    run.skipped = len(frames) - len(run.todo)
    return run


def chunk_plan(todo: list, batch: int, frames_per_chunk: int) -> list:
    """``todo`` cut into chunks of whole batches, aligned at ``todo[0]`` as the single-process path aligns its batches:
    every chunk boundary is a batch boundary (the last chunk may end in a short batch)."""
    size = max(batch, frames_per_chunk // batch * batch)
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def _sweep(out: Path, fmt: str, frames) -> int:
    """Remove the temporary files a killed writer left beside the frames' names (``.frame_00012.png.*.tmp``)."""
    from .io import remove_stale_temporaries
    from .pipeline import frame_name

    return remove_stale_temporaries(out, [frame_name(f, fmt) for f in frames])


@contextlib.contextmanager
def connect(workers: int | None = None, scheduler: str | None = None):
    """A Dask client: a local cluster of ``workers`` processes (one thread each), or the running cluster at
    ``scheduler`` (``tcp://HOST:8786``). Yields ``(client, local)``."""

    distributed = require()
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise KeyfaceError(f"cannot reach the Dask scheduler at {scheduler}: {exc} (start one with `dask "
                               "scheduler`, and workers with `dask worker ADDRESS`)") from None
        try:
            yield client, False
        finally:
            client.close()
        return
    cluster = local_cluster(workers)
    client = distributed.Client(cluster)
    try:
        yield client, True
    finally:
        with contextlib.suppress(Exception):
            client.close()
        with contextlib.suppress(Exception):
            cluster.close()


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PRE_SPAWN_DROPPED = (*THREAD_VARIABLES, "MALLOC_TRIM_THRESHOLD_")


def local_cluster(workers: int, **kwargs):
    """A LocalCluster of ``workers`` processes (1 Dask thread each). Dask's nannies, which live in this process for a
    local cluster, write their ``distributed.nanny.pre-spawn-environ`` into *this* process's environment before each
    spawn, and into their workers'. Two of its defaults hurt keyface, so they are left out:

    * ``OMP_NUM_THREADS=1`` (and MKL's, OpenBLAS's): every program this process starts afterwards (Krita, a
      `keyface render`) would run torch on one thread, and a frame's last bit depends on torch's thread count; keyface
      sets each worker's threads itself (:func:`_configure`);
    * ``MALLOC_TRIM_THRESHOLD_=65536``: setting it turns off glibc's adaptive mmap threshold, so every array above
      128 KiB is mapped and unmapped again — a 4K frame's arrays page-faulted afresh each time. Measured on the 4K
      example: generator 4.0 s and ResWarp 3.7 s per 2-frame batch in a worker with it, 2.0 s and 1.7 s without
      (1.5 s and 1.6 s in the client process). For workers started with ``dask worker``, the README shows the Dask
      setting that does the same."""
    import logging

    import dask

    distributed = require()
    unset = {f"distributed.nanny.pre-spawn-environ.{k}": None for k in PRE_SPAWN_DROPPED}
    with dask.config.set(unset):  # read when the nannies are made; a nanny keeps it for its restarts
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.ERROR, **kwargs)


def _threads_by_host(client) -> dict:
    hosts: dict = {}
    for addr in client.scheduler_info().get("workers", {}):
        host = addr.rsplit(":", 1)[0]
        hosts[host] = hosts.get(host, 0) + 1
    return hosts


def _retries(client, keys) -> int:
    """Chunks taken back from a worker that left (killed, crashed) and run again elsewhere: the scheduler's
    transitions of each task from ``processing`` (running or queued on that worker) back to ``released``; a task that
    raised is not retried (it fails the run)."""
    if not keys:
        return 0
    try:
        story = client.story(*keys, on_error="ignore")
    except Exception:
        return 0
    lost = 0
    for entry in story:  # ("scheduler", key, start, finish, recommendations, stimulus, time)
        if len(entry) >= 4 and entry[0] == "scheduler" and entry[1] in keys and entry[2] == "processing" \
                and entry[3] in ("released", "waiting"):
            lost += 1
    return lost


def render_distributed(runs: list, workers: int | None = None, scheduler: str | None = None, device: str = "cpu",
                       batch: int | None = None, gather: bool = False, chunk: int | None = None,
                       progress: Callable | None = None, should_stop: Callable = lambda: False,
                       client=None) -> list:
    """Render planned scenes (:func:`plan_scene`) on a Dask cluster: a local one of ``workers`` processes, the running
    one at ``scheduler``, or ``client``'s. ``chunk``: frames per task (rounded to whole batches; default: about
    :data:`CHUNKS_PER_WORKER` chunks per worker). ``progress(done, total)`` counts frames across every scene.
    Ctrl-C (KeyboardInterrupt, raised again) or ``should_stop()`` cancels: frames are complete under their final names
    or absent, and the manifests list what is done. Returns the runs (with their counts and times)."""
    require()
    try:
        from .io import folder_lock  # the single-process path's lock: one keyface job writes into a folder at a time
    except ImportError:
        folder_lock = None
    try:
        with contextlib.ExitStack() as locks:
            if folder_lock is not None:
                for r in runs:
                    locks.enter_context(folder_lock(r.out))
            if client is None:
                with connect(workers, scheduler) as (cl, local):
                    return _render(cl, runs, device, batch, gather, chunk, progress, should_stop)
            return _render(client, runs, device, batch, gather, chunk, progress, should_stop)
    except BaseException:
        if client is None and not scheduler:  # the local cluster is closed: no writer is left, sweep what they left
            finish_cancelled(runs)
        raise


def _render(client, runs: list, device, batch, gather, chunk, progress, should_stop) -> list:
    import uuid

    from distributed import Event, as_completed

    from .imageio import read_image
    from .io import atomic_write_bytes
    from .pipeline import frame_name

    total = sum(len(r.frames) for r in runs)
    finished = sum(r.skipped for r in runs)
    if progress:
        progress(finished, total)
    work = [r for r in runs if r.todo]
    if not work:
        for r in runs:
            write_manifest(r)
        return runs
    client.wait_for_workers(1, timeout=120)
    hosts = _threads_by_host(client)
    n_workers = max(1, sum(hosts.values()))
    # each model's default batch, from a worker (which keeps the model loaded for its chunks)
    batches = {}
    for r in work:
        key = (r.scene.model, r.digest)
        if key not in batches:
            batches[key] = batch or client.submit(batch_size, r.scene.model, device, r.digest, hosts, pure=False)
    batches = {k: (v if isinstance(v, int) else v.result()) for k, v in batches.items()}
    todo_total = sum(len(r.todo) for r in work)
    cancel = f"keyface-cancel-{uuid.uuid4().hex}"
    futures, owner = [], {}
    try:
        for i, r in enumerate(work):
            r.batch = batches[(r.scene.model, r.digest)]
            per_chunk = chunk or min(MAX_CHUNK_BATCHES * r.batch,
                                     max(r.batch, round(todo_total / (n_workers * CHUNKS_PER_WORKER))))
            r.chunks = chunk_plan(r.todo, r.batch, per_chunk)
            source = r.source if r.source is not None else read_image(r.scene.source_path)
            source_future = client.scatter(source, hash=True)
            doc, base = r.scene.to_json(), str(r.scene.base_dir)
            r.started = time.perf_counter()
            for frames in r.chunks:
                f = client.submit(render_chunk, doc, base, source_future, source_future.key, frames, r.batch, r.fmt,
                                  str(r.out), gather, device, r.digest, hosts, cancel, pure=False,
                                  key=f"keyface-chunk-{i}-{frames[0]}-{uuid.uuid4().hex[:8]}")
                futures.append(f)
                owner[f.key] = r
        pending = as_completed(futures)
        left = {r.name: len(r.chunks) for r in work}
        last_write = time.monotonic()
        while not pending.is_empty():
            if should_stop():
                raise KeyboardInterrupt
            got = pending.next_batch(block=False)
            if not got:
                time.sleep(0.05)
                continue
            for fut in got:
                r = owner[fut.key]
                result = fut.result()  # a task's error (a KeyfaceError on a worker) is raised here
                for f, data in result["data"].items():
                    atomic_write_bytes(r.out / frame_name(f, r.fmt), data)
                r.done.update(result["frames"])
                r.done.update(result["skipped"])
                r.written += len(result["frames"]) + len(result["skipped"])  # skipped: written by a lost attempt
                finished += len(result["frames"]) + len(result["skipped"])
                left[r.name] -= 1
                if not left[r.name]:
                    r.seconds = time.perf_counter() - r.started
                if progress:
                    progress(finished, total)
            if time.monotonic() - last_write > 5:  # the manifests follow the run (a crash of the client keeps them)
                for r in work:
                    write_manifest(r)
                last_write = time.monotonic()
        for r in work:
            r.retried = _retries(client, {f.key for f in futures if owner[f.key] is r})
            _sweep(r.out, r.fmt, r.frames)
    except BaseException:
        with contextlib.suppress(Exception):
            Event(cancel, client=client).set()
        with contextlib.suppress(Exception):
            client.cancel(futures, force=True)
        raise
    finally:
        for r in runs:
            with contextlib.suppress(Exception):
                write_manifest(r)
    return runs


def finish_cancelled(runs: list) -> None:
    """After a cancel (the local cluster closed: its workers are gone): remove temporary files a stopped writer left,
    and write the manifests again from what is on disk."""
    from .pipeline import frame_name

    for r in runs:
        _sweep(r.out, r.fmt, r.frames)
        r.done |= {f for f in r.frames if (r.out / frame_name(f, r.fmt)).exists()}
        with contextlib.suppress(Exception):
            write_manifest(r)


# --------------------------------------------------------------------------------------------------- command line


def cli_render(args, out) -> int:
    """``keyface render SCENE.json … --workers N | --scheduler ADDRESS [--gather] [--resume]``: one progress bar over
    every scene, a summary per scene; Ctrl-C or SIGTERM cancel (exit 130, finished frames kept)."""
    from .cli.common import progress_bar, table
    from .scene import load_scene

    require()
    if len(args.scene) > 1 and args.out:
        raise KeyfaceError("--out names one scene's output: give one scene, or let each scene use its own folder")
    frames = range(args.frames[0], args.frames[1] + 1) if args.frames else None
    scenes = [(path, load_scene(path)) for path in args.scene]
    runs = [plan_scene(scene, path, args.out, frames, args.format, args.resume) for path, scene in scenes]
    folders: dict = {}
    for r in runs:
        if r.out in folders:
            raise KeyfaceError(f"{folders[r.out]} and {r.name} both render into {r.out}: give each scene its own "
                               "output.directory")
        folders[r.out] = r.name
    for r in runs:
        if r.skipped:
            out.write(f"{r.name}: {r.skipped} frames already in {r.out} are kept ({r.in_manifest} of them listed in "
                      f"its {MANIFEST} with the same weights, {r.digest[:12]})\n")
    total, initial = sum(len(r.frames) for r in runs), sum(r.skipped for r in runs)
    bar, progress = progress_bar("render", "frame", args.quiet, total, initial)
    previous = signal.getsignal(signal.SIGTERM)
    terminated: list = []
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    try:
        render_distributed(runs, workers=args.workers, scheduler=args.scheduler, device=args.device,
                           batch=args.batch, gather=args.gather, chunk=args.chunk, progress=progress,
                           should_stop=lambda: bool(terminated))
    except KeyboardInterrupt:
        bar.close()
        out.write(f"interrupted; finished frames are kept (each folder's {MANIFEST} lists them): rerun with "
                  "--resume\n")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    bar.close()
    rows = [["scene", "frames", "rendered", "kept", "seconds", "frames/s", "retried"]]
    for r in runs:
        rows.append([r.name, str(len(r.frames)), str(r.written), str(r.skipped), f"{r.seconds:.1f}",
                     f"{r.written / r.seconds:.2f}" if r.seconds else "-", str(r.retried)])
    table(rows, out)
    out.write(f"wrote {sum(r.written for r in runs)} frames ({', '.join(str(r.out) for r in runs)})\n")
    return 0


# ------------------------------------------------------------------------------------------------------------- bench


def bench_workers(scene_path, counts: list, frames: int = 12, batch: int | None = None, device: str = "cpu",
                  out=None) -> list:
    """Frames per second of a scene's first ``frames`` frames rendered on local clusters of each worker count (the same
    run; every worker warmed first: model loaded, source prepared), the ratio to the first count, and the scheduler's
    round trip per task measured with empty tasks on the same cluster."""
    import shutil
    import sys

    from .cli.common import table
    from .scene import load_scene

    out = out or sys.stdout
    require()
    scene = load_scene(scene_path)
    results = []
    with tempfile.TemporaryDirectory(prefix="keyface-bench-") as tmp:
        for n in counts:
            target = Path(tmp) / f"w{n}"
            with connect(workers=n) as (client, _):
                client.wait_for_workers(n, timeout=120)
                run = plan_scene(scene, str(scene_path), target, list(scene.frames)[:frames], "png")
                t0 = time.perf_counter()
                keep = warm_workers(client, run, device)
                warm = time.perf_counter() - t0
                t0 = time.perf_counter()
                render_distributed([run], device=device, batch=batch, client=client)
                seconds = time.perf_counter() - t0
                overhead = _task_overhead(client)
                del keep
            results.append({"workers": n, "frames": run.written, "chunks": len(run.chunks), "batch": run.batch,
                            "seconds": seconds, "fps": run.written / seconds, "warm_s": warm,
                            "overhead_ms": overhead * 1000})
            shutil.rmtree(target, ignore_errors=True)
    rows = [["workers", "torch threads", "frames", "chunks", "seconds", "frames/s", "ratio", "warm-up s",
             "task overhead ms"]]
    cores = os.cpu_count() or 1
    for r in results:
        rows.append([str(r["workers"]), str(int(os.environ.get(THREADS_ENV, 0) or max(1, cores // r["workers"]))),
                     str(r["frames"]), str(r["chunks"]), f"{r['seconds']:.2f}", f"{r['fps']:.2f}",
                     f"{r['fps'] / results[0]['fps']:.2f}", f"{r['warm_s']:.1f}", f"{r['overhead_ms']:.1f}"])
    out.write(f"distributed render of {scene_path}: model {scene.model} on {device}, batch {results[0]['batch']}, "
              f"local clusters of worker processes on {cores} cores, PNG frames written by the workers\n")
    table(rows, out)
    return results


def warm_workers(client, run: SceneRun, device: str = "cpu"):
    """Every worker loads the run's model and prepares its source (what a render's first chunk on a worker pays).
    Returns the scattered source's future: keep it while the render runs, so its chunks find the prepared job."""
    from .imageio import read_image

    hosts = _threads_by_host(client)
    source = run.source if run.source is not None else read_image(run.scene.source_path)
    fut = client.scatter(source, hash=True, broadcast=True)
    doc, base = run.scene.to_json(), str(run.scene.base_dir)
    client.gather([client.submit(render_chunk, doc, base, fut, fut.key, [], 1, run.fmt, str(run.out), True, device,
                                 run.digest, hosts, None, workers=[w], allow_other_workers=False, pure=False)
                   for w in client.scheduler_info()["workers"]])
    return fut


def _noop(i):
    return i


def _task_overhead(client, n: int = 200) -> float:
    """Seconds per task of the scheduler's round trip: ``n`` empty tasks submitted and gathered."""
    t0 = time.perf_counter()
    client.gather(client.map(_noop, range(n), pure=False))
    return (time.perf_counter() - t0) / n

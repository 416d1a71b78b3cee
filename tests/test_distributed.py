"""keyface render on a Dask cluster (keyface.core.distributed): a LocalCluster of 2 worker processes renders like the
single-process path (bitwise), survives a worker killed mid-chunk, and resumes after a cancel.

Bitwise needs the same torch thread count on both sides (CPU ConvTranspose2d's last bit depends on it): the reference
renders with 1 thread and the workers are given 1 (``KEYFACE_TORCH_THREADS``)."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from keyface.core.cli import main
from keyface.core.errors import KeyfaceError
from keyface.core.pipeline import frame_name, render_scene
from keyface.core.scene import load_scene

distributed = pytest.importorskip("distributed")
kd = pytest.importorskip("keyface.core.distributed")

FRAMES = 8
BATCH = 3  # batches [0 1 2] [3 4 5] [6 7]: chunks of 3 must cut the same way for bitwise frames


ORIGINAL_ENV = {k for k in kd.PRE_SPAWN_DROPPED if k in os.environ}  # before any cluster was made here

@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two scenes × 8 frames of the shipped ATW model on a small random RGBA image."""
    from PIL import Image

    d = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 128, 4), dtype=np.uint8), "RGBA").save(d / "character.png")
    paths = []
    for i in range(2):
        doc = {"keyface_scene": 1, "source": "character.png", "schema": "au17", "model": "atw-au17",
               "face_box": [32, 8, 64, 64], "fps": 24, "frame_range": [0, FRAMES - 1],
               "output": {"directory": f"frames_{i}"},
               "tracks": {"AU12": {"keys": [{"frame": 0, "value": 0}, {"frame": FRAMES - 1, "value": 4 + i}]},
                          "AU45": {"keys": [{"frame": 0, "value": 0}, {"frame": 4, "value": 5},
                                            {"frame": FRAMES - 1, "value": 0}]}}}
        paths.append(d / f"scene_{i}.json")
        paths[-1].write_text(json.dumps(doc))
    return paths


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory):
    """Each scene rendered by the single-process path (1 torch thread): {scene index: {frame: PNG bytes}}."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        refs = {}
        for i, path in enumerate(scenes):
            out = tmp_path_factory.mktemp(f"ref{i}")
            render_scene(load_scene(path), out, batch=BATCH)
            refs[i] = {f: (out / frame_name(f, "png")).read_bytes() for f in range(FRAMES)}
        return refs
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A LocalCluster of 2 worker processes (1 thread each) whose workers can be told to die (the kill hook)."""
    import os

    hook = tmp_path_factory.mktemp("hook") / "kill"
    saved = {k: os.environ.get(k) for k in (kd.KILL_HOOK, kd.THREADS_ENV)}
    os.environ[kd.KILL_HOOK], os.environ[kd.THREADS_ENV] = str(hook), "1"  # inherited by the worker processes
    cluster = kd.local_cluster(2)
    c = distributed.Client(cluster)
    c.kill_hook = hook
    try:
        yield c
    finally:
        c.close()
        cluster.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _frames(folder: Path) -> dict:
    return {int(p.stem.split("_")[1]): p.read_bytes() for p in folder.glob("frame_*.png")}


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") and p.name != ".keyface.lock"]


def test_chunks_are_whole_batches_aligned_like_the_single_process_path():
    todo = [2, 3, 5, 6, 7, 8, 9, 11]
    chunks = kd.chunk_plan(todo, 3, 7)  # 7 frames asked: 2 batches
    assert chunks == [[2, 3, 5, 6, 7, 8], [9, 11]]
    assert sum(chunks, []) == todo
    assert kd.chunk_plan(todo, 4, 1) == [[2, 3, 5, 6], [7, 8, 9, 11]]  # never less than a batch


def test_two_scenes_on_two_workers_match_the_single_process_render(scenes, reference, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(kd.THREADS_ENV, "1")
    for i, path in enumerate(scenes):
        (tmp_path / path.name).write_text(path.read_text().replace(f"frames_{i}", str(tmp_path / f"out_{i}")))
        (tmp_path / "character.png").write_bytes((path.parent / "character.png").read_bytes())
    args = ["render", str(tmp_path / scenes[0].name), str(tmp_path / scenes[1].name), "--workers", "2", "--batch",
            str(BATCH), "--chunk", "4", "--quiet"]  # 4: rounded to one batch
    assert main(args) == 0
    text = capsys.readouterr().out
    for i in range(2):
        out = tmp_path / f"out_{i}"
        assert _frames(out) == reference[i], f"scene {i} differs from the single-process render"
        assert _no_temporaries(out)
        manifest = kd.read_manifest(out / kd.MANIFEST)
        assert manifest["frames_done"] == [[0, FRAMES - 1]] and manifest["model"] == "atw-au17"
        assert manifest["weights_sha256"] == kd.model_digest("atw-au17")
        rows = [line.split() for line in text.splitlines() if line.split()]
        assert any(r[0].endswith(scenes[i].name) and r[1:3] == [str(FRAMES), str(FRAMES)] for r in rows)
    assert main(args) == 2  # frames exist: nothing is overwritten without --resume
    assert "use --resume" in capsys.readouterr().err


def test_a_worker_killed_mid_chunk_loses_nothing(scenes, reference, client, tmp_path):
    hook = client.kill_hook
    hook.with_name("kill.armed").touch()  # the first worker to write a frame renames it away and SIGKILLs itself
    runs = [kd.plan_scene(load_scene(p), p.name, tmp_path / f"out_{i}") for i, p in enumerate(scenes)]
    kd.render_distributed(runs, batch=BATCH, chunk=BATCH, client=client)
    assert hook.with_name("kill.fired").exists(), "no worker was killed"
    assert sum(r.retried for r in runs) >= 1
    for i, r in enumerate(runs):
        assert _frames(r.out) == reference[i]  # every frame once, each equal to the single-process render
        assert _no_temporaries(r.out)  # the dead writer's temporary file is swept
        assert r.written == FRAMES
        assert kd.manifest_frames(kd.read_manifest(r.manifest)) == set(range(FRAMES))


def _wait_idle(client, timeout=60):
    """Until no task runs on any worker (a cancelled chunk finishes its current batch, then stops)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()):
            return
        time.sleep(0.1)
    raise AssertionError("workers still busy")


def test_resume_after_a_cancelled_render(scenes, reference, client, tmp_path):
    runs = [kd.plan_scene(load_scene(p), p.name, tmp_path / f"out_{i}") for i, p in enumerate(scenes)]

    def interrupt(done, total):
        if done > 0:
            raise KeyboardInterrupt  # Ctrl-C after the first chunk came back

    with pytest.raises(KeyboardInterrupt):
        kd.render_distributed(runs, batch=BATCH, chunk=BATCH, client=client, progress=interrupt)
    _wait_idle(client)
    partial = {i: _frames(r.out) for i, r in enumerate(runs)}
    kept = sum(len(v) for v in partial.values())
    assert 0 < kept < 2 * FRAMES
    for i, frames in partial.items():  # whatever is under a final name is a whole, correct frame
        assert all(frames[f] == reference[i][f] for f in frames)
    listed = sum(len(kd.manifest_frames(kd.read_manifest(r.manifest))) for r in runs)
    assert 0 < listed <= kept

    with pytest.raises(KeyfaceError, match="use --resume"):
        kd.plan_scene(load_scene(scenes[0]), "again", runs[0].out) if partial[0] else \
            kd.plan_scene(load_scene(scenes[1]), "again", runs[1].out)
    again = [kd.plan_scene(load_scene(p), p.name, tmp_path / f"out_{i}", resume=True) for i, p in enumerate(scenes)]
    assert sum(r.skipped for r in again) == kept and sum(r.in_manifest for r in again) == listed
    kd.render_distributed(again, batch=BATCH, chunk=BATCH, client=client, gather=True)  # frames sent back, written here
    for i, r in enumerate(again):
        assert _frames(r.out) == reference[i]
        assert r.written == FRAMES - len(partial[i])
        assert kd.manifest_frames(kd.read_manifest(r.manifest)) == set(range(FRAMES))
        assert _no_temporaries(r.out)


def test_resume_refuses_frames_of_other_weights_movies_and_a_missing_install(scenes, tmp_path, monkeypatch, capsys):
    scene = load_scene(scenes[0])
    out = tmp_path / "out"
    out.mkdir()
    (out / frame_name(0, "png")).write_bytes(b"x")
    (out / kd.MANIFEST).write_text(json.dumps({"keyface_manifest": 1, "model": "atw-au17", "weights_sha256": "0" * 64,
                                               "frames_done": [[0, 0]]}))
    with pytest.raises(KeyfaceError, match="mix two models"):
        kd.plan_scene(scene, "s", out, resume=True)
    with pytest.raises(KeyfaceError, match="not rendered on a cluster"):
        kd.plan_scene(scene, "s", tmp_path / "movie", fmt="mp4")
    assert main(["render", str(scenes[0]), "--gather", "--quiet"]) == 2
    assert "--gather is for cluster renders" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    assert main(["render", str(scenes[0]), "--workers", "2", "--quiet"]) == 2
    assert "pip install" in capsys.readouterr().err
    assert not (tmp_path / "movie").exists() or not any((tmp_path / "movie").iterdir())


def test_the_editors_and_dockers_render_worker_uses_a_scheduler_address(scenes, client, tmp_path):
    """The editor and the Krita docker render through RenderWorker: with a scheduler address, on that cluster, from
    pixels in memory (a Krita layer), frames sent back and written here."""
    pytest.importorskip("PyQt5")
    from keyface.core.imageio import read_image
    from keyface.ui.workers import RenderWorker

    scene = load_scene(scenes[0])
    source = read_image(scene.source_path)
    scene.source = "(krita layer)"  # nothing is read from the scene's source file
    done, failed = [], []
    worker = RenderWorker(scene, tmp_path / "layer", list(range(FRAMES)), "png", source=source,
                          scheduler=client.scheduler.address)
    worker.finished.connect(done.append)
    worker.failed.connect(failed.append)
    worker._run()  # the thread's body, here
    assert failed == [] and done == [FRAMES]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the model's own batch (the worker's default), single process
        render_scene(scene, tmp_path / "here", source=source)
    finally:
        torch.set_num_threads(threads)
    assert _frames(tmp_path / "layer") == _frames(tmp_path / "here")


def test_a_local_cluster_leaves_this_processs_environment_alone(client):
    """Dask's nannies write their pre-spawn environment into the process that owns them and into their workers;
    keyface's local clusters leave the thread variables out (programs started from here afterwards — Krita,
    `keyface render` — run torch on their usual threads and render the same bits) and glibc's trim threshold (which
    made a worker render a 4K frame at half speed)."""
    import os

    assert client.run(lambda: 1)  # the workers are up
    assert not any(k in os.environ and k not in ORIGINAL_ENV for k in kd.PRE_SPAWN_DROPPED)
    assert not any(client.run(lambda: [k for k in kd.PRE_SPAWN_DROPPED if k in os.environ]).values())  # workers

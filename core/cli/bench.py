"""Benchmarks of the spine (each prints a table; ratios against a reference measured in the same run)."""

from __future__ import annotations

from pathlib import Path

from ..errors import KeyfaceError
from .common import positive_int

EXAMPLE_SCENE = Path(__file__).resolve().parent.parent / "data" / "example" / "scene.json"


def cmd_bench_reswarp(args, out) -> int:
    from ..bench import METHODS, SCENES, bench_reswarp

    def pick(text, allowed, what):
        chosen = [v.strip() for v in text.split(",")] if text else list(allowed)
        bad = [v for v in chosen if v not in allowed]
        if bad:
            raise KeyfaceError(f"unknown {what} {', '.join(bad)} (choose from {', '.join(allowed)})")
        return chosen

    bench_reswarp(args.sizes.split(","), repeat=args.repeat, out=out, quality=not args.no_quality,
                  scenes=pick(args.scenes, SCENES, "scene"), methods=pick(args.methods, METHODS, "method"))
    return 0


def cmd_bench_render(args, out) -> int:
    from ..bench import bench_render

    if args.workers:  # frames/s on local Dask clusters of each size (keyface.core.distributed)
        from ..distributed import bench_workers

        try:
            counts = [int(n) for n in args.workers.split(",")]
        except ValueError:
            counts = []
        if not counts or min(counts) < 1:
            raise KeyfaceError(f"--workers expects worker counts like 1,2, got {args.workers!r}")
        bench_workers(args.scene, counts, frames=args.frames, batch=args.batch, device=args.device, out=out)
        return 0
    bench_render(args.scene, frames=args.frames, batch=args.batch, device=args.device, out=out)
    return 0


def cmd_bench_synth(args, out) -> int:
    from ..synth.bench import bench_synth

    sizes = [int(s) for s in args.sizes.split(",")]
    bench_synth(sizes, out=out, characters=args.characters, poses=args.poses)
    return 0


def add(cmds) -> None:
    br = cmds.bench.add_parser("reswarp", help="ResWarp time and peak memory per frame, against a naive reference")
    br.add_argument("--sizes", default="1k,2k,4k,8k", help="comma-separated: 1k, 2k, 4k, 8k")
    br.add_argument("--repeat", type=int, default=5, help="timed runs per cell (median)")
    br.add_argument("--scenes", metavar="A,B", help="expression, head, frame (default: all)")
    br.add_argument("--methods", metavar="A,B", help="copy, remap-floor, naive, {vanilla,multiscale}-{cpu,torch} "
                                                     "(default: all; copy and naive are needed for the ratios)")
    br.add_argument("--no-quality", action="store_true", help="skip the PSNR table")
    br.set_defaults(run=cmd_bench_reswarp)
    bn = cmds.bench.add_parser("render", help="whole-frame render time (generator, ResWarp, encode) and peak memory")
    bn.add_argument("scene", nargs="?", default=str(EXAMPLE_SCENE), help="scene (default: the bundled 4K example)")
    bn.add_argument("--frames", type=positive_int, default=12)
    bn.add_argument("--batch", type=positive_int, default=4)
    bn.add_argument("--device", default="cpu")
    bn.add_argument("--workers", metavar="N,M", help="instead: frames/s on local Dask clusters of N, M … worker "
                                                     "processes (same run, ratio to the first; keyface[cluster])")
    bn.set_defaults(run=cmd_bench_render)
    bs = cmds.bench.add_parser("synth", help="synthetic pairs per second, and one 4K pair")
    bs.add_argument("--sizes", default="128,256,512", help="comma-separated square sizes")
    bs.add_argument("--characters", type=int, default=8, help="characters per cell")
    bs.add_argument("--poses", type=int, default=20, help="poses per character")
    bs.set_defaults(run=cmd_bench_synth)

"""THA3's command-line job: ``keyface bench tha3``."""

from __future__ import annotations

from ...cli.common import positive_int


def cmd_bench_tha3(args, out) -> int:
    from .bench import bench_tha3

    bench_tha3(out, repeat=args.repeat, device=args.device, batch=args.batch)
    return 0


def commands(cmds) -> None:
    b = cmds.bench.add_parser("tha3", help="THA3 per 512² frame: upstream-equivalent evaluation vs keyface, same run "
                                           "and weights, with their largest difference")
    b.add_argument("--repeat", type=positive_int, default=5, help="timed frames (median)")
    b.add_argument("--batch", type=positive_int, default=1, help="poses per call")
    b.add_argument("--device", default="cpu", help="cpu or cuda")
    b.set_defaults(run=cmd_bench_tha3)

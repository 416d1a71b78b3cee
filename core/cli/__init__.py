"""The ``keyface`` command line: one subcommand per user job.

The spine's jobs live here by kind (:mod:`.render`: models, scenes, render, pose, ResWarp, the editor; :mod:`.data`:
synthetic data and helper networks; :mod:`.bench`; :mod:`.hosts`); each method folder adds its own train / eval /
bench commands through ``Method.commands`` (:mod:`keyface.core.models`). Errors caused by input print one clear message
(``keyface: error: ...``) and exit with status 2; an interrupted command exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import KeyfaceError
from . import bench, data, hosts, render
from .common import Commands


def build_parser() -> argparse.ArgumentParser:
    from ..models import methods

    p = argparse.ArgumentParser(prog="keyface", description="Single-image character animation for artists.")
    p.add_argument("--version", action="version", version=f"keyface {__version__}")
    cmds = Commands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    render.add(cmds)
    data.add(cmds)
    for method in methods():
        if method.commands is not None:
            method.commands(cmds)
    hosts.add(cmds)
    bench.add(cmds)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args, sys.stdout)
    except KeyfaceError as e:
        sys.stderr.write(f"keyface: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("keyface: interrupted\n")
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())

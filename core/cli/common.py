"""What every part of the command line shares: argument types, tables, progress bars, the training loop's handling of
signals, and :class:`Commands`, the parser groups the job modules and the method folders add their sub-commands to."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field


def frames_arg(text: str) -> tuple[int, int]:
    try:
        a, b = text.split(":")
        first, last = int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST:LAST (inclusive integers), got {text!r}") from None
    if last < first:
        raise argparse.ArgumentTypeError(f"last frame {last} is before first frame {first}")
    return first, last


def _number(text: str) -> float:
    """``text`` as a float; NaN when it is not a number (every range check then fails)."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def positive(text: str) -> float:
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def set_arg(text: str) -> tuple[str, float]:
    """NAME=VALUE (a channel and its value)."""
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}") from None


def table(rows: list[list[str]], out) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() + "\n")


def progress_bar(desc: str, unit: str, quiet: bool, total: int = 0, initial: int = 0):
    """A tqdm bar and a ``progress(done, total)`` callback that moves it (the form the spine's callbacks take)."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=quiet)

    def progress(done, total=None, logs=None):
        if total is not None:
            bar.total = total
        bar.n = done
        if logs:
            bar.set_postfix(logs, refresh=False)
        bar.refresh()

    return bar, progress


def write_json(path, doc) -> None:
    """A ``--json FILE`` output, written atomically."""
    import json

    from ..io import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=1))


def stop_on_sigterm() -> list:
    """A background job (``nohup … &``) ignores SIGINT: let ``kill`` (SIGTERM) stop training after the current step
    (checkpoint written). Returns a list that becomes non-empty once the signal came."""
    import signal

    came: list = []
    signal.signal(signal.SIGTERM, lambda signum, frame: came.append(signum))
    return came


def run_training(trainer, args, out, keys) -> int:
    """Progress bar (the losses named by the method's ``progress_keys``), SIGTERM/SIGINT → checkpoint and exit 130,
    final message: the same for every method."""
    terminated = stop_on_sigterm()
    bar, move = progress_bar(trainer.method, "step", args.quiet, trainer.cfg.steps, trainer.step)

    def progress(step, logs):
        move(step, logs={k: f"{v:.3g}" for k, v in logs.items() if k in keys})

    try:
        trainer.fit(progress, should_stop=lambda: bool(terminated))
    except KeyboardInterrupt:
        trainer.save()
        terminated.append("SIGINT")
    bar.close()
    if terminated:
        out.write(f"interrupted at step {trainer.step}; checkpoint saved, continue with --resume\n")
        return 130
    out.write(f"finished {trainer.step} steps: {args.out}/generator.safetensors\n")
    return 0


def run_args(tp, default_batch: int, default_lr_help: str, run) -> None:
    """The options every generator trainer has."""
    tp.add_argument("--data", required=True, help="dataset folder written by keyface synth or keyface corpus; "
                                                  "several, comma-separated, are mixed")
    tp.add_argument("--out", required=True, help="run folder (checkpoints, log, final generator)")
    tp.add_argument("--steps", type=positive_int, default=2000, help="generator steps in all (default 2000)")
    tp.add_argument("--batch", type=positive_int, default=default_batch)
    tp.add_argument("--lr", type=positive, default=1e-4, help=default_lr_help)
    tp.add_argument("--eval-every", type=positive_int, default=250, help="steps between evaluations")
    tp.add_argument("--eval-characters", type=positive_int, default=8,
                    help="validation characters (in neither split of the dataset) for evaluations and the best "
                         "checkpoint (best.safetensors)")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--device", default="auto", help="auto, cpu or cuda")
    tp.add_argument("--resume", action="store_true", help="continue the run in --out")
    tp.add_argument("--init", metavar="WEIGHTS",
                    help="start the generator from these weights (.safetensors with its .json; their architecture "
                         "replaces the model options, and weights without AdaIN-conditioned blocks get them, "
                         "started at zero)")
    tp.add_argument("--quiet", action="store_true", help="no progress bar")
    tp.set_defaults(run=run)


@dataclass
class Commands:
    """The parser's groups: ``top`` (``keyface COMMAND``) and the job groups ``train``, ``eval``, ``bench``
    (``keyface train METHOD`` …), each an argparse sub-parsers object to ``add_parser`` to."""

    top: argparse._SubParsersAction
    groups: dict = field(default_factory=dict)

    def group(self, name: str, text: str, dest: str, metavar: str) -> argparse._SubParsersAction:
        if name not in self.groups:
            p = self.top.add_parser(name, help=text)
            self.groups[name] = p.add_subparsers(dest=dest, required=True, metavar=metavar)
        return self.groups[name]

    @property
    def train(self):
        return self.group("train", "train a generator (or a helper network)", "train_command", "WHAT")

    @property
    def eval(self):
        return self.group("eval", "evaluate trained generators on held-out synthetic characters", "eval_command",
                          "METHOD")

    @property
    def bench(self):
        return self.group("bench", "benchmarks (print a table)", "bench_command", "WHAT")

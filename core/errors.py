"""User-facing errors.

Every error a user can cause (bad input, a malformed scene, a missing file) is a :class:`KeyfaceError`; the CLI prints
its message and exits non-zero without a traceback. Anything else escaping is a bug in keyface.
"""

from __future__ import annotations


class KeyfaceError(Exception):
    """An error caused by input, with a message meant for the user."""

    exit_code = 2


class RigError(KeyfaceError, ValueError):
    """Unknown channel, non-finite or out-of-range parameter value, unknown schema."""


class TimelineError(KeyfaceError, ValueError):
    """An invalid keyframe edit or key definition."""


class SceneError(KeyfaceError, ValueError):
    """A malformed scene file. ``errors`` lists ``(json_path, message)`` pairs, all problems found at once."""

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        head = f"{source}: " if source else ""
        lines = [f"{path}: {msg}" if path else msg for path, msg in self.errors]
        if len(lines) == 1:
            text = head + lines[0]
        else:
            text = head + f"{len(lines)} problems\n" + "\n".join("  " + line for line in lines)
        super().__init__(text)


class ResWarpError(KeyfaceError, ValueError):
    """Bad input to ResWarp: sizes that do not match, non-finite flow, unsupported image type."""

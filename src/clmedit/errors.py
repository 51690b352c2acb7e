"""Named exceptions, so callers (the CLI above all) tell a user's mistake from a bug.

Every error a user can fix derives from `ClmeditError`; the CLI prints its message (which says
what is wrong and what to do) and exits 2, never a traceback. Anything else is a bug.
"""

from __future__ import annotations


class ClmeditError(Exception):
    """Base of every error a user can act on."""


class InputError(ClmeditError, ValueError):
    """A file, option or record given by the user is invalid (bad JSON, unknown key, bad range...)."""


class CacheError(ClmeditError):
    """A cache file is unreadable or does not match what it claims to hold; the message names it."""


class UnsupportedModelError(ClmeditError, NotImplementedError):
    """The model's family has no ArchAdapter (or the editor cannot handle this family)."""


class NotSavableError(ClmeditError):
    """The editor has no trained part / no state that can be saved or loaded."""


class IntegrityError(ClmeditError):
    """A saved artifact or run folder does not match its manifest, fingerprint or configuration."""


def describe_validation(err: Exception, option_prefix: str = "") -> str:
    """A pydantic ValidationError in one line, `field: problem; ...` (fields as `--field-name` options
    when `option_prefix="--"`), for messages that name what to fix."""
    parts = []
    for e in err.errors():  # type: ignore[attr-defined]
        msg = str(e["msg"]).removeprefix("Value error, ")
        loc = ".".join(str(p) for p in e["loc"])
        if option_prefix:
            loc = option_prefix + loc.replace("_", "-")
        parts.append(f"{loc}: {msg}" if e["loc"] else msg)
    return "; ".join(parts)

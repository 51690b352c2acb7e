"""Where a command may write: the one guard every `--out` goes through before any work starts.

Invariant: no command writes to, deletes or replaces a file it was given as input, or a file or
folder clmedit did not make. An output path that is empty, the file-system root, an input, a folder
holding an input under a name the command writes, or an existing file or folder that is not the
command's own kind of output is refused with one line (an `InputError`, exit 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from clmedit.errors import InputError

# what may sit in a folder before a command first writes there: locks and our temporary files
_HARMLESS = (".lock", ".tmp")


def output_path(text: str | Path, option: str = "--out") -> Path:
    """The path the user gave, refused when empty or the file-system root."""
    if not str(text).strip():
        raise InputError(f"{option} is empty; give a path")
    path = Path(text).expanduser()
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        raise InputError(f"{option} {text} is the file-system root; give a folder of its own")
    return path


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def check_output_file(text: str | Path, inputs: Iterable[str | Path] = (), ours: bool = False,
                      option: str = "--out") -> Path:  # fmt: skip
    """A file the command will (re)write: not an input, not a folder, and not an existing file unless
    `ours` (the caller recognised it as one clmedit wrote, e.g. by its statistics file)."""
    path = output_path(text, option)
    for given in inputs:
        if _same(path, Path(given)):
            raise InputError(f"{option} {path} is the input file; give another path (clmedit never writes over its input)")
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file path")
    if (path.exists() or path.is_symlink()) and not ours:
        raise InputError(
            f"{option} {path} already exists and was not written by this command; delete it yourself or give a new path"
        )
    return path


def check_output_dir(text: str | Path, inputs: Iterable[str | Path] = (), writes: Callable[[str], bool] = bool,
                     ours: Callable[[Path], bool] | None = None, option: str = "--out") -> Path:  # fmt: skip
    """A folder the command writes into, refused when it is a file, holds an input under a name the
    command writes (`writes(name)`), or already holds files while `ours(folder)` says it is not this
    command's output. Nothing is created here."""
    path = output_path(text, option)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file, not a folder; give a folder")
    for given in map(Path, inputs):
        if _same(path, given):
            raise InputError(f"{option} {path} is an input; give another folder")
        if _same(path, given.parent) and writes(given.name):
            raise InputError(
                f"{option} {path} holds the input {given.name}, a name this command writes; "
                "give another --out (clmedit never writes over its input)"
            )
    if ours is not None and path.is_dir() and foreign_entries(path) and not ours(path):
        shown = ", ".join(sorted(p.name for p in foreign_entries(path))[:3])
        raise InputError(
            f"{option} {path} is a folder clmedit did not make (it holds {shown}...); give a new or empty folder"
        )
    return path


def foreign_entries(folder: Path, allowed: Callable[[Path], bool] = lambda p: False) -> list[Path]:
    """The entries of `folder` other than locks, our temporary files and those `allowed` accepts."""
    return [p for p in folder.iterdir() if not p.name.endswith(_HARMLESS) and not allowed(p)]

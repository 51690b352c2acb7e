"""Small file-system helpers every room shares: the cache root, atomic writes, name slugs, file locks,
seals (size, line count, hash) that let a cache detect a cut or altered file, and the check that an
input is a regular file (reading a FIFO or a device would hang or never end).

Atomic writes go through a uniquely named temporary file in the target's folder, then `os.replace`,
so a crash or a concurrent writer never leaves a torn file; the result gets the permissions a plain
`open()` would give (0666 less the umask), so shared run folders stay shared.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Root of clmedit's on-disk cache: `cache_dir`, else `$CLMEDIT_CACHE`, else `~/.cache/clmedit`."""
    return Path(cache_dir or os.environ.get("CLMEDIT_CACHE") or "~/.cache/clmedit").expanduser()


def slug(text: str, fallback: str = "item") -> str:
    """`text` as a safe single file-name component (no separators, no leading dots)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or fallback
    return cleaned[:120]


def finite_number(value: object, low: float | None = None) -> float | None:
    """`value`, read from a file, as a float only if it is a finite number (never a bool, a string or NaN)
    and, with `low`, not below it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value) if low is None or value >= low else None
    return None


def regular_file(path: str | Path, what: str, inside: str | Path | None = None) -> Path:
    """`path` if it is a regular file, else an `InputError` that says what it is instead.

    With `inside`, a symbolic link whose target leaves that folder is refused too (a fix file must
    not read, say, a file of another user's). Nothing is opened, so a FIFO cannot block.
    """
    from clmedit.errors import InputError

    path = Path(path)
    if inside is not None and not path.resolve().is_relative_to(Path(inside).resolve()):
        raise InputError(f"{what} {path} links outside {inside}; refusing to read it")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise InputError(f"{what} {path} cannot be read ({err.strerror or err})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{what} {path} is not a regular file (a device, FIFO or socket); give a file")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` to fill a temporary file beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write a dict of tensors to `path` as safetensors, atomically (safetensors is imported here so
    this module stays free of torch for the rooms that do not need it)."""
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _dir_sides(path: Path) -> tuple[Path, Path]:
    return path.with_name(f".{path.name}.new"), path.with_name(f".{path.name}.old")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Replace the folder `path` by one `write(tmp)` fills: readers see the old folder or the new one.

    The new folder is filled beside `path`, then put in place by two renames (old out, new in); a
    crash between them leaves no `path`, which `finish_dir_write` repairs. The old folder goes whole,
    with anything else it held.
    """
    path = Path(path)
    new, old = _dir_sides(path)
    path.mkdir(parents=True, exist_ok=True)  # so a missing `path` always means "cut between the renames"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    write(new)
    _fsync_dir(new)
    shutil.rmtree(old, ignore_errors=True)
    os.rename(path, old)
    os.rename(new, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def finish_dir_write(path: str | Path) -> None:
    """Complete an `atomic_write_dir` of `path` that a crash cut short, and clear its leftovers."""
    path = Path(path)
    new, old = _dir_sides(path)
    if not path.exists() and new.is_dir():  # cut between the renames: the new folder is whole
        os.rename(new, path)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def locked(path: str | Path, timeout: float = -1) -> Iterator[None]:
    """Hold an exclusive lock on `path`.lock across processes (portable; waits by default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(path.name + ".lock")), timeout=timeout):
        yield


def _digest(path: Path) -> dict[str, int | str]:
    h, size, lines = hashlib.sha256(), 0, 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
            lines += block.count(b"\n")
    return {"bytes": size, "lines": lines, "sha256": h.hexdigest()}


def seal_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".seal.json")


def write_seal(path: str | Path) -> Path:
    """Record `path`'s size, line count and sha256 beside it, so a cut or altered copy is detected."""
    return atomic_write_text(seal_path(path), json.dumps(_digest(Path(path))) + "\n")


def is_sealed(path: str | Path) -> bool:
    """True iff `path` exists and still has the size, lines and hash its seal recorded."""
    path, seal = Path(path), seal_path(path)
    if not path.is_file() or not seal.is_file():
        return False
    try:
        return json.loads(seal.read_text(encoding="utf-8")) == _digest(path)
    except (OSError, ValueError):
        return False

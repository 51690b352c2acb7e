"""clmedit.files: atomic writes (umask, concurrent writers), the file lock, slugs, the cache root."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
from pathlib import Path

import pytest

from clmedit.files import atomic_write_bytes, atomic_write_text, cache_root, locked, slug


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_atomic_write_respects_umask(tmp_path, umask_022):
    path = atomic_write_text(tmp_path / "sub" / "summary.json", "{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o077)
    atomic_write_bytes(path, b"x")  # a rewrite takes the umask in force now, like open() would
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _writer(path: str, char: str, rounds: int) -> None:
    for _ in range(rounds):
        atomic_write_text(path, char * 200_000)


def _reader(path: str, rounds: int, torn) -> None:
    for _ in range(rounds):
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            continue
        if len(text) != 200_000 or len(set(text)) != 1:
            torn.value += 1


def test_concurrent_writers_never_tear_or_leave_temp_files(tmp_path):
    path = str(tmp_path / "cases.jsonl")
    ctx = mp.get_context("fork")
    torn = ctx.Value("i", 0)
    procs = [ctx.Process(target=_writer, args=(path, c, 40)) for c in "ab"]
    procs.append(ctx.Process(target=_reader, args=(path, 400, torn)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    text = Path(path).read_text()
    assert len(text) == 200_000 and set(text) in ({"a"}, {"b"})
    assert torn.value == 0
    assert [p.name for p in tmp_path.iterdir()] == ["cases.jsonl"]  # no temporary file left


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def boom(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    from clmedit.files import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def _count(path: str, rounds: int) -> None:
    for _ in range(rounds):
        with locked(path):  # read-modify-write: lost updates without the lock
            n = int(Path(path).read_text())
            Path(path).write_text(str(n + 1))


def test_locked_serialises_read_modify_write(tmp_path):
    path = tmp_path / "counter"
    path.write_text("0")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_count, args=(str(path), 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert path.read_text() == "150"


def test_slug_is_one_safe_name():
    assert slug("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB_SmolLM2-135M"
    assert slug("../../etc/passwd") == "etc_passwd"
    assert slug("...", "model") == "model"
    assert len(slug("x" * 500)) == 120


def test_cache_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CLMEDIT_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("CLMEDIT_CACHE")
    assert cache_root() == Path.home() / ".cache" / "clmedit"

"""A grid on a local Ray cluster gives the records one machine gives, and a killed worker costs nothing."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter

import pytest
import torch

from clmedit.data.schema import iter_jsonl, write_cases
from clmedit.errors import InputError
from clmedit.grid.cell import run
from clmedit.grid.distributed import Cluster, run_grid
from clmedit.grid.study import study
from clmedit.models.tiny import tiny_model
from clmedit.results import read_records
from clmedit.run.settings import RunConfig
from tests.conftest import make_case

try:
    import ray
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (pip install -e '.[ray]')")


@pytest.fixture(scope="module")
def local_cluster(_private_cache):
    """Two CPUs, no dashboard; one thread per process so the local runs compute what the workers do."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield Cluster(workers=2)
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grid_inputs(tmp_path_factory):
    """A tiny model saved where the workers can load it by path, and a case file."""
    root = tmp_path_factory.mktemp("grid")
    lm, tok = tiny_model("llama")
    lm.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    data = root / "cases.jsonl"
    write_cases(data, [make_case(i, target=f"x{i} + {i}") for i in range(12)])
    return str(root / "tiny"), str(data)


def _config(model, data, out, editor, **kw) -> RunConfig:
    return RunConfig(
        model=model, editor=editor, data=data, out=out, preset="tiny", fluency=False, device="cpu", **kw
    )


def _by_case(out) -> dict[str, dict]:
    return {
        r.case_id: r.model_dump(include={"scores", "fold", "error"}) for r in read_records(out)
    }


@needs_ray
def test_grid_on_ray_gives_the_records_of_one_machine(local_cluster, grid_inputs, tmp_path):
    model, data = grid_inputs
    grid = {"ft": {}, "grace": {}, "malmen": {"folds": 2}}  # malmen: trained once per fold, then shared
    grid = {e: {**kw, "limit": 8} for e, kw in grid.items()}
    for editor, kw in grid.items():
        run(_config(model, data, tmp_path / "local" / editor, editor, **kw))
    configs = [_config(model, data, tmp_path / "ray" / e, e, **kw) for e, kw in grid.items()]
    assert run_grid(configs, local_cluster, progress=False) == [None] * len(grid)
    for editor in grid:
        here, there = tmp_path / "local" / editor, tmp_path / "ray" / editor
        assert len(list(there.glob("cases.*of2.jsonl"))) == 2  # the run went out as two shards
        assert _by_case(there) == _by_case(here) and len(_by_case(here)) == 8
        local, ray_ = (json.loads((d / "summary.json").read_text()) for d in (here, there))
        assert ray_["metrics"] == local["metrics"] and ray_["counts"] == local["counts"]
        assert ray_["config"]["shard"] == "0/1" and ray_["label"] == local["label"]
    assert sorted(p.name for p in (tmp_path / "ray" / "malmen").iterdir() if p.name.startswith("fold")) == [
        "fold0",
        "fold1",
    ]


def _shard_worker_pid() -> int | None:
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any("GridWorker.shard" in part for part in proc.info["cmdline"] or []):
            return proc.info["pid"]
    return None


@needs_ray
def test_a_killed_worker_costs_only_its_unfinished_cases(local_cluster, grid_inputs, tmp_path):
    model, data = grid_inputs
    config = _config(model, data, tmp_path / "ft", "ft")
    outcome: list = []
    grid = threading.Thread(target=lambda: outcome.extend(run_grid([config], local_cluster, progress=False)))
    grid.start()
    killed_at, deadline = None, time.monotonic() + 90
    while killed_at is None and grid.is_alive() and time.monotonic() < deadline:
        done = sum(1 for p in (tmp_path / "ft").glob("cases*.jsonl") for _ in iter_jsonl(p))
        pid = _shard_worker_pid() if done >= 2 else None
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed_at = done
        time.sleep(0.05)
    grid.join(timeout=120)
    assert killed_at is not None and killed_at < 12, "the worker was not killed mid-run"
    assert outcome == [None]
    ok = Counter(
        r["case_id"]
        for p in (tmp_path / "ft").glob("cases*.jsonl")
        for r in iter_jsonl(p)
        if not r.get("error")
    )
    assert sorted(ok) == sorted(f"case-{i}" for i in range(12)) and set(ok.values()) == {1}
    assert json.loads((tmp_path / "ft" / "summary.json").read_text())["counts"]["ok"] == 12


@needs_ray
def test_cluster_options_are_checked():
    for bad in ({"address": "http://x"}, {"workers": 0}, {"gpus_per_worker": -1}):
        with pytest.raises(InputError):
            Cluster(**bad)


@needs_ray
def test_quick_study_on_ray_writes_the_tables_of_one_machine(local_cluster, grid_inputs, tmp_path):
    model, data = grid_inputs
    here = study(
        model, ("cnle",), "quick", out=tmp_path / "here", data={"cnle": data}, fluency=False, device="cpu"
    )
    there = study(model, ("cnle",), "quick", out=tmp_path / "ray", data={"cnle": data}, fluency=False, device="cpu",
                  cluster=local_cluster)  # fmt: skip
    assert "FAILED" not in there.read_text()
    for table in ("table3.md", "table4.md", "table5.md", "table6.md"):  # (cost.md: measured times differ)
        assert (here.parent / table).read_text() == (there.parent / table).read_text(), table


def test_without_ray_the_cli_says_how_to_install_it(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from clmedit.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where it is not installed
    with pytest.raises(InputError, match=r"pip install 'clmedit\[ray\]'"):
        Cluster("local")
    result = CliRunner().invoke(app, ["study", "--quick", "--ray", "local", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "--ray needs Ray" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["study", "--workers", "2", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "need --ray" in result.output

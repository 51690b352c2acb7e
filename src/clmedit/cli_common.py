"""What every CLI command shares: the one error path, and options built from RunConfig's fields.

A user error (a `ClmeditError`, an invalid option, a path that cannot be used, a value click refuses
while parsing) raised anywhere in a command ends as one line on stderr and exit code 2; anything else
is a bug and keeps its traceback. Values are checked here, at the edge, before any model loads.
Options of run-like commands take their default, range and help from `RunConfig`, declared once.
Imports stay light (no torch), so `clmedit --help` is instant.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import typer
from typer.core import TyperGroup

try:  # recent typer parses options with its own copy of click, hence its own exception classes
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover (older typer: click's)
    from click.exceptions import NoArgsIsHelpError, UsageError


def user_error_message(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback).

    User errors are `ClmeditError`s, invalid options (pydantic's ValidationError) and paths that
    do not exist or cannot be used.
    """
    from clmedit.errors import ClmeditError, describe_validation

    if isinstance(err, ClmeditError):
        return str(err)
    if isinstance(
        err, (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
    ):
        return f"{err.strerror or err}: {err.filename}" if err.filename else str(err)
    if type(err).__name__ == "ValidationError" and type(err).__module__.startswith("pydantic"):
        return describe_validation(err, option_prefix="--")
    return None


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error (no traceback) and return the Exit to raise."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


class Commands(TyperGroup):
    """The CLI's one error path: a user error in any command is one line on stderr and exit code 2."""

    def invoke(self, ctx):  # noqa: ANN001, ANN201 (click's signature)
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except UsageError as err:  # a bad option value: one line, not typer's boxed panel
            where = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
            raise fail(err.format_message().rstrip(".") + where) from None
        except Exception as err:
            message = user_error_message(err)
            if message is None:
                raise
            raise fail(message) from None


THREADS_HELP = "CPU threads for torch (default: all cores); 1 when other jobs share the machine"
HP_HELP = "hparams override key=value, value in YAML (repeatable), e.g. --hp lr=1e-4 --hp layers=[3]"
OVERWRITE_HELP = "discard the results already in --out (they belong to another configuration)"
_SHORT = {"data": "-d", "out": "-o", "model": "-m", "editor": "-e", "limit": "-n"}


def run_option(field: str, *decls: str, **kwargs):  # noqa: ANN202 (a typer OptionInfo)
    """A typer option for the RunConfig field `field`: its default and help are the field's own."""
    from clmedit.run.settings import RunConfig

    info = RunConfig.model_fields[field]
    flag = "--" + field.replace("_", "-")
    if not decls:
        decls = (
            (f"{flag}/--no-{flag[2:]}",) if info.annotation in (bool, "bool") and info.default else (flag,)
        )
        decls += (_SHORT[field],) if field in _SHORT else ()
    for bound in info.metadata:  # the field's own range, shown in --help and checked early
        if getattr(bound, "ge", None) is not None:
            kwargs.setdefault("min", bound.ge)
        if getattr(bound, "gt", None) is not None:
            kwargs.setdefault("min", bound.gt + 1)
        if getattr(bound, "le", None) is not None:
            kwargs.setdefault("max", bound.le)
    default = ... if info.is_required() else info.get_default(call_default_factory=True)
    return typer.Option(default, *decls, help=info.description, **kwargs)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(threads: int | None) -> None:
    """Cap torch's CPU threads: on a shared machine oversubscribed threads make forwards ~10x slower.

    More threads than CPUs is refused: it only slows torch down, and a huge count exhausts memory."""
    from clmedit.errors import InputError

    if threads is not None:
        if not 1 <= threads <= cpu_count():
            raise InputError(f"--threads {threads}: this machine has {cpu_count()} CPU(s); use 1 to {cpu_count()}")
        import torch

        torch.set_num_threads(threads)


def check_embedder(name: str) -> str:
    """`--embedder`: minilm, bm25, an existing local model folder, or a Hugging Face name (`org/name`)."""
    from clmedit.errors import InputError

    if name in ("minilm", "bm25") or Path(name).expanduser().is_dir():
        return name
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise InputError(
            f"--embedder {name!r} is neither a local model folder nor a model name; use minilm, bm25, "
            "a sentence-transformers name (org/name) or an existing folder"
        )
    return name


def parse_hp(pairs: list[str]) -> dict:
    """['lr=1e-4', 'layers=[3]'] -> {'lr': 0.0001, 'layers': [3]} (values parsed as YAML)."""
    import yaml

    from clmedit.errors import InputError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--hp expects key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "not valid YAML"
            raise InputError(f"--hp {pair!r}: the value is {problem}; quote it or fix its YAML") from None
    return out


def run_config(options: dict, hp: list[str]):  # noqa: ANN202
    """A RunConfig from a command's options (those named like its fields) and --hp pairs."""
    from clmedit.run.settings import RunConfig

    fields = {k: v for k, v in options.items() if k in RunConfig.model_fields and k != "hparams"}
    return RunConfig(**fields, hparams=parse_hp(hp))


def report_outcome(summaries: list[dict], where: Path) -> None:
    """Say which lines of the data were skipped; exit 1 when cases failed (how many, and why).

    `summaries` are those of one run, or of every run of a bench under `where`.
    """
    from collections import Counter

    cases, failed, why = 0, 0, Counter()
    for summary in summaries:
        skipped = summary.get("skipped_lines") or {}
        if skipped.get("count"):
            reasons = ", ".join(f"{r}: {n}" for r, n in skipped["by_reason"].items())
            typer.secho(
                f"warning: {skipped['count']} line(s) of {skipped['file']} skipped ({reasons}); "
                "their line numbers are in summary.json",
                err=True,
                fg=typer.colors.YELLOW,
            )
        cases += summary.get("counts", {}).get("cases", 0)
        failed += summary.get("counts", {}).get("failed", 0)
        why.update(summary.get("failures", {}).get("by_type", {}))
    if failed:
        types = ", ".join(f"{t}: {n}" for t, n in why.items())
        raise fail(
            f"{failed} of {cases} case(s) failed ({types}); the errors are in cases*.jsonl under {where}, "
            "and rerunning the same command retries them",
            code=1,
        )

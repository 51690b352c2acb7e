"""The one hook utility: trace a module's input/output, replace its output, or stop early.

    with Trace(model, "model.layers.5.mlp.down_proj", retain_input=True) as tr:
        model(**batch)
    keys = tr.input          # (B, T, d_mlp)

    with Trace(model, path, edit_output=lambda out, inp: out + delta, stop=True):
        model(**batch)       # raises nothing: the forward pass is cut right after `path`

Every editor reaches activations through this file; none writes its own hook plumbing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn


class StopForward(Exception):
    """Raised inside a hook to end a forward pass once the traced module has run."""


def _first_tensor(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


class Trace(AbstractContextManager):
    """Hook one submodule (by dotted path or module) for the duration of a `with` block.

    retain_input / retain_output: keep the module's (first) input / output tensor.
    detach: keep detached copies (no graph) instead of live tensors.
    edit_output: f(output, input) -> new output; applied before the output is retained.
    stop: end the forward pass after this module (StopForward is swallowed on exit).
    """

    def __init__(
        self,
        model: nn.Module,
        module: str | nn.Module,
        retain_input: bool = False,
        retain_output: bool = True,
        detach: bool = False,
        edit_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        stop: bool = False,
    ):
        self.module = model.get_submodule(module) if isinstance(module, str) else module
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None

        def hook(mod: nn.Module, args: tuple, out: Any) -> Any:
            inp = _first_tensor(args) if args else None
            if retain_input:
                self.input = inp.detach() if detach else inp
            if edit_output is not None:
                if isinstance(out, tuple):
                    out = (edit_output(out[0], inp), *out[1:])
                else:
                    out = edit_output(out, inp)
            if retain_output:
                first = _first_tensor(out)
                self.output = first.detach() if detach else first
            if stop:
                raise StopForward
            return out

        self._handle = self.module.register_forward_hook(hook)

    def close(self) -> None:
        self._handle.remove()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return exc_type is not None and issubclass(exc_type, StopForward)


class TraceDict(AbstractContextManager):
    """Trace several modules at once: `td[path].input`, `td[path].output`.

    With stop=True the forward pass ends after the *last* listed module runs (in forward order).
    """

    def __init__(self, model: nn.Module, modules: Iterable[str], stop: bool = False, **trace_kwargs: Any):
        paths = list(dict.fromkeys(modules))
        self._traces: dict[str, Trace] = {}
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        last = max(paths, key=lambda p: order.get(p, -1)) if paths else None
        for path in paths:
            self._traces[path] = Trace(model, path, stop=stop and path == last, **trace_kwargs)

    def __getitem__(self, path: str) -> Trace:
        return self._traces[path]

    def close(self) -> None:
        for tr in self._traces.values():
            tr.close()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return exc_type is not None and issubclass(exc_type, StopForward)


class CallObserver:
    """Mixin of a wrapped module that needs the whole call, not only its input: `observe`, a forward
    pre-hook (with kwargs) on the model, keeps the call's attention mask and how many tokens its KV
    cache holds; the module's next forward takes them with `take_call` (None when no hook ran)."""

    _call: dict[str, Any] | None = None

    def observe(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the whole model: remember the attention mask and the cache length."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        self._call = {"mask": kwargs.get("attention_mask"), "past": int(past)}

    def take_call(self) -> dict[str, Any] | None:
        call, self._call = self._call, None
        return call

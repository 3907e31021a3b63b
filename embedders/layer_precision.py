"""Which layers of a model are wrong in reduced precision, and keeping them in float32.

`layer_errors` runs a model once in float32 with forward hooks on every submodule that
holds parameters: as each one returns, it is run again alone, on a copy of the float32
input it was just given, under the reduced precision's autocast, and the relative error
of its output kept. A module whose error is far above honest rounding is at fault;
`layers_at_fault` keeps the innermost ones (a module that only contains a layer at fault
is not at fault itself). `keep_in_fp32` makes them run with autocast off, in place.
"""

import math
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from embedders.batching import precision_context
from embedders.spec import Precision

TensorFn = Callable[[torch.Tensor], torch.Tensor]
Call = tuple[tuple[object, ...], dict[str, object]]  # a forward's args and kwargs


def _tensors(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple | Mapping):
        for v in value.values() if isinstance(value, Mapping) else value:
            yield from _tensors(v)


def _mapped(value: object, fn: TensorFn) -> object:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, list | tuple):
        return type(value)(_mapped(v, fn) for v in value)
    if isinstance(value, Mapping):
        return {k: _mapped(v, fn) for k, v in value.items()}
    return value


def map_call(args: tuple[object, ...], kwargs: dict[str, object], fn: TensorFn) -> Call:
    """A call's arguments with `fn` applied to every tensor in their tuples, lists, dicts."""
    return tuple(_mapped(a, fn) for a in args), {k: _mapped(v, fn) for k, v in kwargs.items()}


def relative_error(exact: object, approx: object) -> float:
    """The largest ||y - y'|| / ||y|| over the floating tensors of two outputs of the same
    structure; inf where it is not finite."""
    worst = 0.0
    for y, y_hat in zip(_tensors(exact), _tensors(approx), strict=True):
        if y.is_floating_point():
            y64 = y.double()
            err = ((y64 - y_hat.double()).norm() / y64.norm().clamp_min(1e-30)).item()
            worst = max(worst, err if math.isfinite(err) else math.inf)
    return worst


class _Hooks:
    """The hooks of one `layer_errors` pass: inputs saved on the way in, each module rerun
    under the reduced autocast on the way out, the worst error of each module kept."""

    def __init__(self, precision: Precision, device: torch.device) -> None:
        self.precision, self.device = precision, device
        self.errors: dict[str, float] = {}
        self._inputs: dict[str, list[Call]] = {}
        self._rerunning = False  # the reruns' own calls are not measured

    def attach(self, module: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        handles = []
        for name, sub in module.named_modules():
            if name and any(True for _ in sub.parameters()):  # the root is not one layer
                pre = sub.register_forward_pre_hook(self._pre(name), with_kwargs=True)
                handles += [pre, sub.register_forward_hook(self._post(name), with_kwargs=True)]
        return handles

    def _pre(self, name: str) -> Callable[[nn.Module, tuple[object, ...], dict[str, object]], None]:
        def hook(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
            if not self._rerunning:  # a copy: a module may change its input in place
                self._inputs.setdefault(name, []).append(map_call(args, kwargs, torch.clone))

        return hook

    def _post(self, name: str) -> Callable[[nn.Module, object, object, object], None]:
        def hook(module: nn.Module, args: object, kwargs: object, output: object) -> None:
            if self._rerunning:
                return
            saved_args, saved_kwargs = self._inputs[name].pop()
            self._rerunning = True
            try:
                with precision_context(self.precision, self.device):
                    reduced = module(*saved_args, **saved_kwargs)
            finally:
                self._rerunning = False
            err = relative_error(output, reduced)
            self.errors[name] = max(self.errors.get(name, 0.0), err)

        return hook


def layer_errors(
    module: nn.Module, run_fp32: Callable[[], object], precision: Precision, device: torch.device
) -> dict[str, float]:
    """The relative error in `precision` of every submodule of `module` holding parameters
    that `run_fp32` (a float32 forward) calls, each run alone on its float32 input, by
    qualified name. Modules that are not called are left out."""
    hooks = _Hooks(precision, device)
    handles = hooks.attach(module)
    try:
        run_fp32()
    finally:
        for handle in handles:
            handle.remove()
    return hooks.errors


def layers_at_fault(errors: Mapping[str, float], *, limit: float) -> tuple[str, ...]:
    """The innermost modules whose error exceeds `limit` (or is NaN): a module above it
    only because a submodule is (its error includes theirs) is left out."""
    high = [name for name, err in errors.items() if not err <= limit]
    return tuple(n for n in high if not any(o.startswith(n + ".") for o in high))


class Fp32Forward:
    """A module's forward in float32: autocast off, bf16 and fp16 inputs widened."""

    def __init__(self, forward: Callable[..., object], device_type: str) -> None:
        self.forward, self.device_type = forward, device_type

    def __call__(self, *args: object, **kwargs: object) -> object:
        def widen(t: torch.Tensor) -> torch.Tensor:
            return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t

        with torch.autocast(self.device_type, enabled=False):
            wide_args, wide_kwargs = map_call(args, kwargs, widen)
            return self.forward(*wide_args, **wide_kwargs)


def keep_in_fp32(module: nn.Module, names: tuple[str, ...], device_type: str) -> Callable[[], None]:
    """Make the named submodules of `module` run in float32, in place (once: a module
    already kept is left as it is); returns what undoes it."""
    changed: list[tuple[nn.Module, Callable[..., object] | None]] = []
    for name in names:
        sub = module.get_submodule(name)
        if not isinstance(sub.forward, Fp32Forward):
            changed.append((sub, vars(sub).get("forward")))  # an instance's own forward, if any
            sub.forward = Fp32Forward(sub.forward, device_type)

    def undo() -> None:
        for sub, own in changed:
            if own is None:
                del sub.forward  # the class's forward again
            else:
                sub.forward = own

    return undo


def kept_in_fp32(module: nn.Module) -> tuple[str, ...]:
    """The qualified names of the submodules `keep_in_fp32` has changed."""
    return tuple(n for n, sub in module.named_modules() if isinstance(sub.forward, Fp32Forward))

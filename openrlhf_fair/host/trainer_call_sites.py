"""Runtime call sites of the pairwise trainers' hook points, for an OpenRLHF without `patches/`.

The one module that patches RewardModelTrainer (openrlhf/trainer/rm_trainer.py) and DPOTrainer
(openrlhf/trainer/dpo_trainer.py). It installs, around the host methods and calling them every time, the call
sites that `patches/openrlhf-<version>/extension-hooks.diff` writes into them, all reading the add-on's hook
registry (`host.extension_hooks`):
- ``__init__``: ``self.loss_fn = apply_loss_hooks(self, self.loss_fn)`` after the host chose its loss;
- ``fit`` and ``evaluate``: each batch's ``get_loss_inputs(loss_fn, batch, step)`` reaches the loss call as
  keyword arguments (the host calls ``self.loss_fn(...)`` itself, so for the duration of the method the
  trainer's ``loss_fn`` is a `_LossCall` that adds them; ``step`` is the host's micro-step, counted from the
  ``consumed_samples`` of a resumed run as the host counts it);
- ``save_logs_and_checkpoints``: ``get_loss_logs(loss_fn)`` averaged over the data-parallel ranks joins the
  step's logs before the host logs them (the diff adds them to every micro-step's logs, before the same
  all-reduce; the loss keeps the optimizer step's mean, so the logged values are the same);
- ``evaluate``: ``get_eval_logs(trainer)`` joins the eval logs the host all-reduces and then logs (progress bar,
  wandb, TensorBoard): for the duration of the method the strategy's ``all_reduce`` adds them to the first
  dict it is given, which in the host's evaluate is its eval logs.
Patched only while a feature needs it; nothing happens at import time.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from openrlhf_fair.host import extension_hooks as hooks
from openrlhf_fair.host.compat import host_arg
from openrlhf_fair.host.patching import HostMismatchError, patch_attribute, require_attribute, undo_all

PATCH_ID = "openrlhf_fair.pairwise_trainer"
# The host methods wrapped, and the parameters each wrapper reads (checked before anything is patched).
WRAPPED_PARAMETERS = {
    "__init__": ("strategy",),
    "fit": ("args", "consumed_samples"),
    "save_logs_and_checkpoints": ("step_bar", "logs_dict"),
    "evaluate": ("eval_dataloader",),
}
WRAPPED_METHODS = tuple(WRAPPED_PARAMETERS)


def check_parameters(method: Callable, names: tuple[str, ...]) -> inspect.Signature:
    """The host method's signature (seen through wrappers that set ``__wrapped__``), which must have ``names``."""
    signature = inspect.signature(method)
    missing = [name for name in names if name not in signature.parameters]
    if missing:
        raise HostMismatchError(
            f"openrlhf-fair: {getattr(method, '__qualname__', method)}{signature} has no parameter(s) "
            f"{', '.join(missing)}; the trainer patch needs updating for this OpenRLHF version"
        )
    return signature


def _bind(signature: inspect.Signature, *args, **kwargs) -> inspect.BoundArguments:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return bound


class _LossCall:
    """The trainer's loss, called with the keyword arguments `get_loss_inputs` gave for the current batch."""

    def __init__(self, loss_fn) -> None:
        self.loss_fn = loss_fn
        self.inputs: dict = {}

    def __call__(self, *args, **kwargs):  # a patched host passing them itself (runtime mode there) wins
        return self.loss_fn(*args, **{**self.inputs, **kwargs})

    def __getattr__(self, name):
        return getattr(self.loss_fn, name)


class _Batches:
    """Iterates the host dataloader unchanged, handing each batch's loss inputs to the `_LossCall` first."""

    def __init__(self, dataloader, call: _LossCall, first_step=None) -> None:
        self._dataloader, self._call, self._step = dataloader, call, first_step

    def __iter__(self):
        for batch in self._dataloader:
            self._call.inputs = hooks.get_loss_inputs(self._call.loss_fn, batch, self._step)
            if self._step is not None:
                self._step += 1
            yield batch

    def __len__(self) -> int:
        return len(self._dataloader)

    def __getattr__(self, name):
        return getattr(self._dataloader, name)


def _wrap_init(original):
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.loss_fn = hooks.apply_loss_hooks(self, self.loss_fn)

    return __init__


def _wrap_fit(original):
    signature = check_parameters(original, WRAPPED_PARAMETERS["fit"])

    @functools.wraps(original)
    def fit(self, *args, **kwargs):
        bound = _bind(signature, self, *args, **kwargs)
        host_args, consumed = bound.arguments["args"], bound.arguments["consumed_samples"]
        first_step = consumed // host_arg(host_args, "train.batch_size") * self.strategy.accumulated_gradient + 1  # as the host
        loss_fn, dataloader = self.loss_fn, self.train_dataloader
        self.loss_fn = call = _LossCall(loss_fn)
        self.train_dataloader = _Batches(dataloader, call, first_step)
        try:
            return original(self, *args, **kwargs)
        finally:
            self.loss_fn, self.train_dataloader = loss_fn, dataloader

    return fit


def _wrap_save_logs(original):
    signature = check_parameters(original, WRAPPED_PARAMETERS["save_logs_and_checkpoints"])

    @functools.wraps(original)
    def save_logs_and_checkpoints(self, *args, **kwargs):
        bound = _bind(signature, self, *args, **kwargs)
        logs = hooks.get_loss_logs(self.loss_fn)
        if logs:  # every rank calls this at the same steps, so the all-reduce is safe
            logs = self.strategy.all_reduce(logs)
            logs_dict = bound.arguments["logs_dict"]
            if logs_dict is None or logs_dict is signature.parameters["logs_dict"].default:
                # a fresh dict, never the host's shared default (0.9.3 - 0.10.x: ``logs_dict={}``)
                logs_dict = bound.arguments["logs_dict"] = {}
            logs_dict.update(logs)
            step_bar = bound.arguments["step_bar"]
            if step_bar is not None:
                step_bar.set_postfix(logs_dict)
        return original(*bound.args, **bound.kwargs)

    return save_logs_and_checkpoints


def _wrap_evaluate(original):
    signature = check_parameters(original, WRAPPED_PARAMETERS["evaluate"])

    @functools.wraps(original)
    def evaluate(self, *args, **kwargs):
        bound = _bind(signature, self, *args, **kwargs)
        loss_fn, strategy = self.loss_fn, self.strategy  # inside fit, loss_fn is fit's _LossCall
        self.loss_fn = call = _LossCall(loss_fn.loss_fn if isinstance(loss_fn, _LossCall) else loss_fn)
        bound.arguments["eval_dataloader"] = _Batches(bound.arguments["eval_dataloader"], call)
        host_all_reduce, shadowed = strategy.all_reduce, strategy.__dict__.get("all_reduce")
        added: list[bool] = []

        def all_reduce(data, *a, **k):
            if isinstance(data, dict) and not added:
                added.append(True)
                data = {**data, **hooks.get_eval_logs(self)}
            return host_all_reduce(data, *a, **k)

        strategy.all_reduce = all_reduce
        try:
            result = original(*bound.args, **bound.kwargs)
        finally:
            if shadowed is None:
                del strategy.all_reduce
            else:
                strategy.all_reduce = shadowed
            self.loss_fn = loss_fn
        if not added:
            raise HostMismatchError(
                f"openrlhf-fair: {type(self).__name__}.evaluate no longer all-reduces its eval logs through "
                "strategy.all_reduce; the eval-logs call site needs updating for this OpenRLHF version"
            )
        return result

    return evaluate


_MAKERS = {
    "__init__": _wrap_init,
    "fit": _wrap_fit,
    "save_logs_and_checkpoints": _wrap_save_logs,
    "evaluate": _wrap_evaluate,
}


def check_host(cls: type) -> None:
    """Fail loudly, before anything is patched, when a wrapped method or parameter of ``cls`` moved."""
    for name, parameters in WRAPPED_PARAMETERS.items():
        check_parameters(require_attribute(cls, name, f"{cls.__name__} method wrapped by openrlhf-fair"), parameters)


def install_call_sites(cls: Any) -> Callable[[], None]:
    """Install the hook points' call sites on the trainer class ``cls``; return the undo (all or nothing).

    Installing them again is harmless (a no-op undo).
    """
    check_host(cls)
    undos: list[Callable[[], None]] = []
    try:
        for name, make in _MAKERS.items():
            undos.append(patch_attribute(cls, name, make, f"{PATCH_ID}.{name}"))
    except BaseException:
        undo_all(undos)()
        raise
    return undo_all(undos)

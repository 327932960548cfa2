"""The fairness feature of OpenRLHF's pairwise trainers: RewardModelTrainer (openrlhf/trainer/rm_trainer.py) for
train_rm and DPOTrainer (openrlhf/trainer/dpo_trainer.py) for train_dpo. One adapter for both, and the one module
that patches those two classes.

`apply_rm_fairness(config)` / `apply_dpo_fairness(config)` (called by the `openrlhf train_rm` / `train_dpo`
runner only when a fairness flag is given) register, at the ``rm_loss`` / ``dpo_loss`` hook point of
`host.native_hooks` (native on a host with `patches/`, else at the runtime call sites below):
- a loss hook: checks the run (>= 2 pairs in the set F is computed over, group key vs packing) before training,
  replaces the host's loss (PairWiseLoss/LogExpLoss, or DPOLoss: sigmoid, cDPO or IPO) by `FairPairWiseLoss` /
  `FairDPOLoss` around it (for DPO the term and the metrics are over the implicit-reward margins), and records
  the settings in the model config (saved as ``openrlhf_fair`` in config.json). The loss then tells the host
  which inputs it needs per batch (group ids, step: `FairPairWiseLoss.batch_inputs`) and gives the step logs
  (``fairness/...``, means over the optimizer step, then over the ranks);
- an eval hook: the eval fairness metrics (`metrics.pairwise_eval_metrics` of the eval pairs, gathered over
  the ranks), which join the host's own eval logs (progress bar, wandb, TensorBoard).
With ``--fairness_group_key`` the dataset patch `host.labels.apply_group_labels` is applied too.

Runtime call sites (`install_call_sites`, on a host without `patches/`): around the host methods and calling
them every time, the call sites that `patches/openrlhf-<version>/extension-hooks.diff` writes into them, all
reading the add-on's hook registry (`host.extension_hooks`):
- ``__init__``: ``self.loss_fn = apply_loss_hooks(self, self.loss_fn)`` after the host chose its loss;
- ``fit`` and ``evaluate``: each batch's ``get_loss_inputs(loss_fn, batch, step)`` reaches the loss call as
  keyword arguments (the host calls ``self.loss_fn(...)`` itself, so for the duration of the method the
  trainer's ``loss_fn`` is a `_LossCall` that adds them; ``step`` is the host's micro-step, counted from the
  ``consumed_samples`` of a resumed run as the host counts it);
- ``save_logs_and_checkpoints``: ``get_loss_logs(loss_fn)`` averaged over the data-parallel ranks joins the
  step's logs before the host logs them (the diff adds them to every micro-step's logs, before the same
  all-reduce; the loss keeps the optimizer step's mean, so the logged values are the same);
- ``evaluate``: ``get_eval_logs(trainer)`` joins the eval logs the host all-reduces and then logs: for the
  duration of the method the strategy's ``all_reduce`` adds them to the first dict it is given, which in the
  host's evaluate is its eval logs.
Nothing happens at import time.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from openrlhf_fair.errors import FairnessConfigError, HostMismatchError
from openrlhf_fair.settings import RewardFairnessConfig
from openrlhf_fair.host import extension_hooks as hooks, native_hooks
from openrlhf_fair.host.compat import host_arg
from openrlhf_fair.host.patching import patch_attribute, require_attribute, undo_all

SAVED_CONFIG_KEY = "openrlhf_fair"
RM_PATCH_ID = "openrlhf_fair.rm_trainer"
DPO_PATCH_ID = "openrlhf_fair.dpo_trainer"
CALL_SITES_PATCH_ID = "openrlhf_fair.pairwise_trainer"
EVAL_LOGS_PATCH_ID = "openrlhf_fair.pairwise_trainer.eval_logs"


# --------------------------------------------------------------------------------------------- checks
def data_parallel_size(strategy) -> int:
    world = int(getattr(strategy, "world_size", 1) or 1)
    ring = int(host_arg(strategy.args, "ds.ring_attn_size", 1))
    tp = int(host_arg(strategy.args, "ds.tensor_parallel_size", 1))
    return max(1, world // ring // tp)


def check_run(config: RewardFairnessConfig, strategy) -> None:
    """Refuse, before training starts, runs whose fairness term could do nothing or cannot work."""
    args = strategy.args
    micro = int(host_arg(args, "train.micro_batch_size"))
    dp = data_parallel_size(strategy) if config.scope == "global" else 1
    if micro * dp < config.min_items:
        where = "micro-batch" if config.scope == "micro" else f"global micro-batch ({dp} data-parallel rank(s))"
        raise FairnessConfigError(
            f"fairness needs at least {config.min_items} preference pairs in the set F is computed over, but the "
            f"{where} has {micro * dp} (--train.micro_batch_size {micro}; OpenRLHF's default is 1). With one pair F "
            "is a constant with zero gradient. Raise --train.micro_batch_size (the authors used 32)"
            + (" or use --fairness_scope global on several ranks." if config.scope == "micro" else ".")
        )
    if config.group_key is not None:
        from openrlhf_fair.features.labels import check_group_key_with_host_args

        check_group_key_with_host_args(config.group_key, args)


def _process_group(config: RewardFairnessConfig, strategy):
    if config.scope != "global":
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    mesh = require_attribute(strategy, "ds_device_mesh", "the data-parallel group for --fairness_scope global")
    return mesh["dp"].get_group()


# --------------------------------------------------------------------------------------------- hooks
def fair_loss_for(trainer, loss_fn, config: RewardFairnessConfig, loss_class=None):
    """``loss_class`` (default `FairPairWiseLoss`; `FairDPOLoss` for DPO) around the trainer's host loss, after
    checking the run; the settings (and the training max_len) are recorded in the model config."""
    if loss_class is None:
        from openrlhf_fair.core.losses import FairPairWiseLoss as loss_class

    strategy = trainer.strategy
    check_run(config, strategy)
    fair = loss_class(
        loss_fn,
        config,
        process_group=_process_group(config, strategy),
        steps_per_update=getattr(strategy, "accumulated_gradient", 1),
    )
    saved = {**config.to_dict(), "max_len": host_arg(strategy.args, "data.max_len")}
    strategy._unwrap_model(trainer.model).config.update({SAVED_CONFIG_KEY: saved})
    strategy.print(f"openrlhf-fair: {fair.extra_repr()}")
    return fair


def eval_logs(trainer) -> dict[str, float]:
    """The eval fairness metrics of the pairs the trainer's loss saw in this evaluation (all ranks)."""
    import torch

    strategy = trainer.strategy
    names = getattr(getattr(trainer.eval_dataloader, "dataset", None), "fair_group_names", None)
    with torch.no_grad():
        metrics = trainer.loss_fn.eval_logs(strategy.all_gather, group_names=names)  # padded sampler: equal sizes
    if metrics:
        strategy.print("openrlhf-fair eval: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return metrics


# --------------------------------------------------------------------------------------------- apply
def apply_rm_fairness(config: RewardFairnessConfig) -> Callable[[], None]:
    """Hook RewardModelTrainer (and patch RewardDataset with a group key) for ``config``; return the undo.

    Applying the same config twice is harmless; a different config on top of an applied one is an error.
    """
    _check_config(config)
    from openrlhf.trainer import rm_trainer as host

    cls = require_attribute(host, "RewardModelTrainer", "the reward-model trainer of train_rm")
    return apply_to_trainer(cls, config, RM_PATCH_ID, "rm_loss")


def apply_dpo_fairness(config: RewardFairnessConfig) -> Callable[[], None]:
    """Hook DPOTrainer (and patch RewardDataset with a group key) for ``config``; return the undo.

    Applying the same config twice is harmless; a different config on top of an applied one is an error.
    """
    _check_config(config)
    from openrlhf.trainer import dpo_trainer as host

    from openrlhf_fair.core.dpo_losses import FairDPOLoss

    cls = require_attribute(host, "DPOTrainer", "the DPO trainer of train_dpo")
    return apply_to_trainer(cls, config, DPO_PATCH_ID, "dpo_loss", loss_class=FairDPOLoss)


def _check_config(config) -> None:
    if not isinstance(config, RewardFairnessConfig):
        raise TypeError("apply_rm_fairness / apply_dpo_fairness need a RewardFairnessConfig, "
                        f"got {type(config).__name__}")


_applied: dict[str, RewardFairnessConfig] = {}  # patch id -> the config applied (until undone)


def apply_to_trainer(cls, config: RewardFairnessConfig, patch_id: str, hook_point: str, loss_class=None):
    """Register the loss and eval hooks of ``config`` for the pairwise trainer ``cls`` at ``hook_point``
    (installing its runtime call sites on a host without the native ones); return the undo (all or nothing)."""
    if patch_id in _applied:
        if _applied[patch_id] != config:
            raise FairnessConfigError(f"{cls.__name__} is already patched with another config: {_applied[patch_id]}")
        return lambda: None
    if config.group_key is not None:  # group labels have no hook point: a dataset patch (refused in native mode)
        native_hooks.require_runtime_patching("--fairness_group_key (group labels from the dataset)")
    native = native_hooks.use_native_hook(hook_point)
    if not native:
        check_host(cls)
    undos: list[Callable[[], None]] = []

    def undo() -> None:
        undo_all(undos)()
        _applied.pop(patch_id, None)

    try:
        if not native:
            undos.append(install_call_sites(cls))
        undos.append(native_hooks.register_loss_hook(
            cls, lambda trainer, loss_fn: fair_loss_for(trainer, loss_fn, config, loss_class),
            f"{patch_id}.loss_hook", settings=config, native=native))
        undos.append(native_hooks.register_eval_hook(cls, eval_logs, f"{patch_id}.eval_hook", settings=config, native=native))
        if config.group_key is not None:
            from openrlhf_fair.features.labels import apply_group_labels

            undos.append(apply_group_labels(config.group_key))
    except BaseException:
        undo()
        raise
    _applied[patch_id] = config
    return undo


# --------------------------------------------------------------------------------------------- runtime call sites
# The host methods wrapped, and the parameters each wrapper reads (checked before anything is patched).
WRAPPED_PARAMETERS = {
    "__init__": ("strategy",),
    "fit": ("args", "consumed_samples"),
    "save_logs_and_checkpoints": ("step_bar", "logs_dict"),
    "evaluate": ("eval_dataloader",),
}


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
        added: list[bool] = []

        def adding_eval_logs(host_all_reduce):
            def all_reduce(data, *a, **k):
                if isinstance(data, dict) and not added:
                    added.append(True)
                    data = {**data, **hooks.get_eval_logs(self)}
                return host_all_reduce(data, *a, **k)

            return all_reduce

        # on this strategy instance, for the duration of the call, under the patch contract (undone in `finally`)
        undo_all_reduce = patch_attribute(strategy, "all_reduce", adding_eval_logs, EVAL_LOGS_PATCH_ID)
        try:
            result = original(*bound.args, **bound.kwargs)
        finally:
            undo_all_reduce()
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
            undos.append(patch_attribute(cls, name, make, f"{CALL_SITES_PATCH_ID}.{name}"))
    except BaseException:
        undo_all(undos)()
        raise
    return undo_all(undos)

"""Fairness-aware reward-model training: wraps OpenRLHF's RewardModelTrainer (openrlhf/trainer/rm_trainer.py).

`apply_fairness(config)` (called by the `openrlhf train_rm` runner only when a fairness flag is given) wraps,
calling the originals every time:
- ``__init__``: checks the run (>= 2 pairs in the set F is computed over, group key vs packing) before
  training, replaces ``self.loss_fn`` by `FairPairWiseLoss` around the host's PairWiseLoss/LogExpLoss, and
  records the settings in the model config (saved as ``openrlhf_fair`` in config.json);
- ``fit``: feeds each batch's group labels to the loss (group mode) and aligns its step counter on resume;
- ``save_logs_and_checkpoints``: adds the fairness metrics (base loss, fairness term, F, Jain, Gini, averaged
  over the optimizer step and over ranks) to the host's logs dict: progress bar, wandb, tensorboard;
- ``evaluate``: Jain/Gini/F of the eval allocations and, with a group key, per-group accuracy, mean reward
  and best-minus-worst gaps, logged next to the host's eval metrics.
With ``--fairness_group_key`` the dataset patch `openrlhf_fair.host.reward_dataset` is applied too.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Optional

from openrlhf_fair.config import FairnessConfigError, RewardFairnessConfig
from openrlhf_fair.host import native_hooks
from openrlhf_fair.host.patching import HostMismatchError, is_patched, patch_attribute, require_attribute, undo_all

PATCH_ID = "openrlhf_fair.rm_trainer"
CONFIG_ATTR = "__openrlhf_fair_config__"
SAVED_CONFIG_KEY = "openrlhf_fair"
# The host methods we wrap, and the parameters each wrapper reads (checked before anything is patched).
WRAPPED_PARAMETERS = {
    "__init__": ("strategy",),
    "fit": ("args", "consumed_samples"),
    "save_logs_and_checkpoints": ("step_bar", "logs_dict"),
    "evaluate": ("eval_dataloader", "steps"),
}
WRAPPED_METHODS = tuple(WRAPPED_PARAMETERS)


# --------------------------------------------------------------------------------------------- checks
def data_parallel_size(strategy) -> int:
    world = int(getattr(strategy, "world_size", 1) or 1)
    ring = int(getattr(strategy.args.ds, "ring_attn_size", 1) or 1)
    tp = int(getattr(strategy.args.ds, "tensor_parallel_size", 1) or 1)
    return max(1, world // ring // tp)


def check_run(config: RewardFairnessConfig, strategy) -> None:
    """Refuse, before training starts, runs whose fairness term could do nothing or cannot work."""
    args = strategy.args
    micro = int(args.train.micro_batch_size)
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
        from openrlhf_fair.host.reward_dataset import check_group_key_with_host_args

        check_group_key_with_host_args(config.group_key, args)


def _process_group(config: RewardFairnessConfig, strategy):
    if config.scope != "global":
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    mesh = require_attribute(strategy, "ds_device_mesh", "the data-parallel group for --fairness_scope global")
    return mesh["dp"].get_group()


# --------------------------------------------------------------------------------------------- batches
class _GroupLabelFeed:
    """Iterates the host dataloader unchanged; hands each batch's group ids (5th element) to the loss first."""

    def __init__(self, dataloader, loss) -> None:
        self._dataloader = dataloader
        self._loss = loss
        self.group_names: Optional[list] = None

    def __iter__(self):
        for batch in self._dataloader:
            extras = batch[4]
            group_ids = getattr(extras, "group_ids", None)
            if group_ids is None:
                raise HostMismatchError(
                    "openrlhf-fair: a batch carries no group labels although --fairness_group_key is set; the "
                    "dataset patch openrlhf_fair.host.reward_dataset did not reach this dataloader"
                )
            self.group_names = extras.group_names
            self._loss.set_batch_group_ids(group_ids)
            yield batch

    def __len__(self) -> int:
        return len(self._dataloader)

    def __getattr__(self, name):
        return getattr(self._dataloader, name)


def _check_parameters(method: Callable, names: tuple[str, ...]) -> inspect.Signature:
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


# --------------------------------------------------------------------------------------------- evaluation metrics
def eval_fairness_metrics(
    config: RewardFairnessConfig, chosen, reject, group_ids=None, group_names: Optional[list] = None
) -> dict[str, float]:
    """`metrics.pairwise_eval_metrics` of the eval set under the run's tau and temperature."""
    from openrlhf_fair.metrics import pairwise_eval_metrics

    if not group_names:
        group_ids = None
    return pairwise_eval_metrics(
        chosen, reject, tau=config.tau, temperature=config.temperature, group_ids=group_ids, group_names=group_names
    )


# --------------------------------------------------------------------------------------------- wrappers
def fair_loss_for(trainer, loss_fn, config: RewardFairnessConfig, loss_class=None):
    """``loss_class`` (default `FairPairWiseLoss`; `FairDPOLoss` for DPO) around the trainer's host loss, the
    settings recorded in the model config (runtime patch and native loss hook alike)."""
    if loss_class is None:
        from openrlhf_fair.losses import FairPairWiseLoss as loss_class

    strategy = trainer.strategy
    fair = loss_class(
        loss_fn,
        config,
        process_group=_process_group(config, strategy),
        steps_per_update=getattr(strategy, "accumulated_gradient", 1),
    )
    strategy._unwrap_model(trainer.model).config.update({SAVED_CONFIG_KEY: config.to_dict()})
    strategy.print(f"openrlhf-fair: {fair.extra_repr()}")
    return fair


def _wrap_init(config: RewardFairnessConfig, loss_class=None):
    def make(original):
        signature = _check_parameters(original, WRAPPED_PARAMETERS["__init__"])

        @functools.wraps(original)
        def __init__(self, *args, **kwargs):
            strategy = _bind(signature, self, *args, **kwargs).arguments["strategy"]
            check_run(config, strategy)
            original(self, *args, **kwargs)
            self.loss_fn = fair_loss_for(self, self.loss_fn, config, loss_class)

        return __init__

    return make


def _native_loss_hook(config: RewardFairnessConfig, loss_class=None):
    """For OpenRLHF's native loss hook (`patches/`): what the ``__init__`` wrapper does, from inside ``__init__``."""

    def wrap_loss(trainer, loss_fn):
        check_run(config, trainer.strategy)
        return fair_loss_for(trainer, loss_fn, config, loss_class)

    return wrap_loss


def _wrap_fit(config: RewardFairnessConfig):
    def make(original):
        signature = _check_parameters(original, WRAPPED_PARAMETERS["fit"])

        @functools.wraps(original)
        def fit(self, *args, **kwargs):
            bound = _bind(signature, self, *args, **kwargs)
            host_args, consumed = bound.arguments["args"], bound.arguments["consumed_samples"]
            self.loss_fn.micro_step = consumed // host_args.train.batch_size * self.strategy.accumulated_gradient
            if config.group_key is None:
                return original(self, *args, **kwargs)
            dataloader = self.train_dataloader
            self.train_dataloader = _GroupLabelFeed(dataloader, self.loss_fn)
            try:
                return original(self, *args, **kwargs)
            finally:
                self.train_dataloader = dataloader

        return fit

    return make


def _wrap_save_logs(config: RewardFairnessConfig):
    def make(original):
        signature = _check_parameters(original, WRAPPED_PARAMETERS["save_logs_and_checkpoints"])

        @functools.wraps(original)
        def save_logs_and_checkpoints(self, *args, **kwargs):
            bound = _bind(signature, self, *args, **kwargs)
            fair = self.loss_fn.pop_window_metrics()
            if fair:  # every rank calls this at the same steps, so the all-reduce is safe
                import torch

                names = sorted(fair)  # one collective for all metrics (mean over ranks)
                values = self.strategy.all_reduce(torch.tensor([fair[k] for k in names], dtype=torch.float64))
                fair = dict(zip(names, values.tolist()))
                logs_dict = bound.arguments["logs_dict"]
                if logs_dict is None:
                    logs_dict = bound.arguments["logs_dict"] = {}
                logs_dict.update(fair)
                step_bar = bound.arguments["step_bar"]
                if step_bar is not None:
                    step_bar.set_postfix(logs_dict)
            return original(*bound.args, **bound.kwargs)

        return save_logs_and_checkpoints

    return make


def _wrap_evaluate(config: RewardFairnessConfig):
    def make(original):
        signature = _check_parameters(original, WRAPPED_PARAMETERS["evaluate"])

        @functools.wraps(original)
        def evaluate(self, *args, **kwargs):
            import torch

            bound = _bind(signature, self, *args, **kwargs)
            feed = None
            if config.group_key is not None:
                feed = bound.arguments["eval_dataloader"] = _GroupLabelFeed(bound.arguments["eval_dataloader"], self.loss_fn)
            self.loss_fn.start_eval_recording()
            try:
                result = original(*bound.args, **bound.kwargs)
            finally:
                records = self.loss_fn.stop_eval_recording()
            if records["chosen"] is None:
                return result
            strategy = self.strategy
            device = next(self.model.parameters()).device
            gather = lambda t: strategy.all_gather(t.to(device)).cpu()  # noqa: E731  (equal sizes: padded sampler)
            chosen, reject = gather(records["chosen"]), gather(records["reject"])
            group_ids = gather(records["group_ids"]) if records["group_ids"] is not None else None
            with torch.no_grad():
                metrics = eval_fairness_metrics(
                    config, chosen, reject, group_ids, feed.group_names if feed is not None else None
                )
            steps = bound.arguments["steps"]
            if strategy.is_rank_0():
                if self._wandb is not None:
                    self._wandb.log({**{f"eval/{k}": v for k, v in metrics.items()}, "eval/global_step": steps})
                elif self._tensorboard is not None:
                    for k, v in metrics.items():
                        self._tensorboard.add_scalar(f"eval/{k}", v, steps)
            strategy.print("openrlhf-fair eval: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            return result

        return evaluate

    return make


# --------------------------------------------------------------------------------------------- apply
def apply_fairness(config: RewardFairnessConfig) -> Callable[[], None]:
    """Patch RewardModelTrainer (and RewardDataset with a group key) for ``config``; return the undo function.

    Applying the same config twice is harmless; a different config on top of an applied one is an error.
    """
    if not isinstance(config, RewardFairnessConfig):
        raise TypeError(f"apply_fairness needs a RewardFairnessConfig, got {type(config).__name__}")
    from openrlhf.trainer import rm_trainer as host

    cls = require_attribute(host, "RewardModelTrainer", "the reward-model trainer of train_rm")
    return apply_to_trainer(cls, config, PATCH_ID, "rm_loss")


def apply_to_trainer(cls, config: RewardFairnessConfig, patch_id: str, hook_point: str, loss_class=None):
    """Wrap the pairwise trainer ``cls`` (RewardModelTrainer; DPOTrainer with `FairDPOLoss`); return the undo.

    On an OpenRLHF with the native loss hook ``hook_point`` (`patches/`), registers the hook instead.
    """
    if config.group_key is not None:  # group labels have no hook point: runtime patches (refused in native mode)
        native_hooks.require_runtime_patching("--fairness_group_key (group labels from the dataset)")
    elif native_hooks.use_native_hook(hook_point):  # patches/ applied: no runtime patch (step logs via the hook)
        return native_hooks.register_loss_hook(
            cls, _native_loss_hook(config, loss_class), f"{patch_id}.loss_hook", settings=config
        )
    for name, parameters in WRAPPED_PARAMETERS.items():
        method = require_attribute(cls, name, f"{cls.__name__} method wrapped by openrlhf-fair")
        _check_parameters(method, parameters)
    if is_patched(cls, "__init__", f"{patch_id}.__init__"):
        applied = getattr(cls.__init__, CONFIG_ATTR, None)
        if applied != config:
            raise FairnessConfigError(f"{cls.__name__} is already patched with another config: {applied}")

    makers = {
        "__init__": _wrap_init(config, loss_class),
        "fit": _wrap_fit(config),
        "save_logs_and_checkpoints": _wrap_save_logs(config),
        "evaluate": _wrap_evaluate(config),
    }

    def tagged(make):
        def build(original):
            replacement = make(original)
            setattr(replacement, CONFIG_ATTR, config)
            return replacement

        return build

    undos: list[Callable[[], None]] = []

    undo = undo_all(undos)

    try:  # all or nothing: a host symbol missing half-way leaves nothing patched
        for name, make in makers.items():
            undos.append(patch_attribute(cls, name, tagged(make), f"{patch_id}.{name}"))
        if config.group_key is not None:
            from openrlhf_fair.host.reward_dataset import apply_group_labels

            undos.append(apply_group_labels(config.group_key))
    except BaseException:
        undo()
        raise
    return undo

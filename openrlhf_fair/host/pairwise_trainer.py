"""The fairness feature of OpenRLHF's pairwise trainers (RewardModelTrainer for train_rm, DPOTrainer for
train_dpo): one adapter, registered at the hook points of `host.native_hooks`.

`apply_to_trainer(cls, config, ...)` registers for trainers of ``cls`` (native on a host with `patches/`, else
at the call sites `host.trainer_call_sites` installs at run time):
- a loss hook: checks the run (>= 2 pairs in the set F is computed over, group key vs packing) before training,
  replaces the host's loss (PairWiseLoss/LogExpLoss, or DPOLoss) by `FairPairWiseLoss` / `FairDPOLoss` around
  it, and records the settings in the model config (saved as ``openrlhf_fair`` in config.json). The loss then
  tells the host which inputs it needs per batch (group ids, step: `FairPairWiseLoss.batch_inputs`) and gives
  the step logs (``fairness/...``, means over the optimizer step, then over the ranks);
- an eval hook: the eval fairness metrics (`metrics.pairwise_eval_metrics` of the eval pairs, gathered over
  the ranks), which join the host's own eval logs (progress bar, wandb, TensorBoard).
With ``--fairness_group_key`` the dataset patch `host.reward_dataset` is applied too.
"""

from __future__ import annotations

from typing import Callable

from openrlhf_fair.config import FairnessConfigError, RewardFairnessConfig
from openrlhf_fair.host import native_hooks, trainer_call_sites
from openrlhf_fair.host.compat import host_arg
from openrlhf_fair.host.patching import require_attribute, undo_all

SAVED_CONFIG_KEY = "openrlhf_fair"


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


# --------------------------------------------------------------------------------------------- hooks
def fair_loss_for(trainer, loss_fn, config: RewardFairnessConfig, loss_class=None):
    """``loss_class`` (default `FairPairWiseLoss`; `FairDPOLoss` for DPO) around the trainer's host loss, after
    checking the run; the settings (and the training max_len) are recorded in the model config."""
    if loss_class is None:
        from openrlhf_fair.losses import FairPairWiseLoss as loss_class

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
        trainer_call_sites.check_host(cls)
    undos: list[Callable[[], None]] = []

    def undo() -> None:
        undo_all(undos)()
        _applied.pop(patch_id, None)

    try:
        if not native:
            undos.append(trainer_call_sites.install_call_sites(cls))
        undos.append(native_hooks.register_loss_hook(
            cls, lambda trainer, loss_fn: fair_loss_for(trainer, loss_fn, config, loss_class),
            f"{patch_id}.loss_hook", settings=config, native=native))
        undos.append(native_hooks.register_eval_hook(cls, eval_logs, f"{patch_id}.eval_hook", settings=config, native=native))
        if config.group_key is not None:
            from openrlhf_fair.host.reward_dataset import apply_group_labels

            undos.append(apply_group_labels(config.group_key))
    except BaseException:
        undo()
        raise
    _applied[patch_id] = config
    return undo

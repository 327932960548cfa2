"""PPO fairness shaping in OpenRLHF's experience maker (openrlhf/trainer/ppo_utils/experience_maker.py).

`apply_fairness(config)` (called by the `openrlhf train_ppo_ray` runner only when a PPO fairness flag is
given) registers `shape_experiences` at the experience hook point (`host.native_hooks`: native on a host with
`patches/`, else this module installs its call site at the end of
`RemoteExperienceMaker.compute_advantages_and_returns`, the one runtime patch of that method): the host
method runs unchanged (length penalties, group baselines, reward clip + KL, GAE or returns, whitening), then
each sample's advantages are multiplied by its fairness weight (`openrlhf_fair.core.shaping`), so every estimator
keeps its own baseline and the weights are not normalised away; returns (the critic's targets) stay as they
are. The batch's fairness numbers go into ``experience.info`` as per-sample tensors, which OpenRLHF averages
into its logged train metrics (``fairness/F``, ``fairness/jain``, ...).

Where it runs: the experience maker lives in OpenRLHF's PPO trainer Ray actor (or the async training actor),
which a driver-side patch does not reach; `host.ray_workers` carries `apply_in_worker` inside the args to
every actor process. With ``--fair_unit label:KEY`` the label column is carried too (`host.labels`).
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, List

from openrlhf_fair.host import extension_hooks, native_hooks, ray_workers
from openrlhf_fair.host.compat import host_arg
from openrlhf_fair.errors import HostMismatchError
from openrlhf_fair.host.patching import patch_attribute, require_attribute, undo_all
from openrlhf_fair.features.labels import LABEL_INFO_KEY  # carried per sample; popped before logging
from openrlhf_fair.core.measures import METRIC_NAMESPACE, row_group_means
from openrlhf_fair.settings import PPOFairnessConfig

PATCH_ID = "openrlhf_fair.experience_maker"
HOOK_ID = "openrlhf_fair.experience_maker.hook"
HOST_MODULE = "openrlhf.trainer.ppo_utils.experience_maker"
WORKER_TARGET = "openrlhf_fair.features.experience_maker:apply_in_worker"
MAX_LABEL_METRICS = 32  # per-label mean rewards logged for at most this many labels per batch
CLIPPED_WARNING_FRACTION = 0.5  # warn (once) when more than this share of a batch's weights is clipped
STATE_ATTR = "_openrlhf_fair_state"
CHECKPOINT_PATCH_ID = "openrlhf_fair.fair_history_checkpoints"
TRAINER_MODULE = "openrlhf.trainer.ppo_trainer"
HISTORY_CHECKPOINT_KEY = "openrlhf_fair_history"  # in the checkpoint's client states: agent key -> log m_k

logger = logging.getLogger("openrlhf_fair.ppo")

# The one active configuration in this process (patch or hook): id -> (config, undo). Not read by the math.
_active: dict[str, tuple[PPOFairnessConfig, Callable[[], None]]] = {}


def _log(message: str, warning: bool = False) -> None:
    """Through OpenRLHF's logger when the host has set it up (Ray actors), else the standard logger."""
    from openrlhf_fair.host.compat import in_host_spelling

    host_logging = sys.modules.get("openrlhf.utils.logging_utils")
    target = host_logging.init_logger("openrlhf_fair") if host_logging is not None else logger
    (target.warning if warning else target.info)(in_host_spelling(message))


def _metric_name(label) -> str:
    from openrlhf_fair.core.measures import LABEL_REWARD_PREFIX, metric_safe_name

    return LABEL_REWARD_PREFIX + metric_safe_name(label)


def _state(maker) -> dict:
    """What the feature keeps on the experience maker between rollout batches."""
    return maker.__dict__.setdefault(STATE_ATTR, {"batches": 0, "warned": set(), "history": {}})


def agent_keys(agent_ids, sample_keys: list) -> list:
    """The key of each agent (compact id k = 0..K-1): the key of its first sample (a label, or a prompt's text)."""
    keys: dict = {}
    for agent, key in zip(agent_ids.tolist(), sample_keys):
        keys.setdefault(agent, key)
    return [keys[agent] for agent in range(len(keys))]


# --------------------------------------------------------------------------------------------- the step
def shape_experiences(maker, experiences: List, config: PPOFairnessConfig) -> List:
    """Scale each sample's advantages by its fairness weight and log the batch's fairness; see module doc.

    Runs after the host computed advantages and returns. Raises FairnessInputError on NaN/Inf rewards, naming
    the rollout batch. Measure-only configs (coef = reg = 0) leave the advantages untouched.
    """
    import torch

    from openrlhf_fair.errors import FairnessInputError
    from openrlhf_fair.core.shaping import fairness_weights, label_agent_ids, prompt_agent_ids, remembered_allocation

    state = _state(maker)
    state["batches"] += 1
    batch = state["batches"]
    carried = [exp.info.pop(LABEL_INFO_KEY, None) for exp in experiences]
    if not experiences:
        return experiences

    lengths = [len(exp.rewards) for exp in experiences]
    rewards = torch.cat([exp.rewards for exp in experiences]).detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(rewards).all()):
        bad = int((~torch.isfinite(rewards)).sum())
        raise FairnessInputError(
            f"openrlhf-fair: {bad} of {rewards.numel()} rewards are NaN/Inf in rollout batch {batch} of this run "
            f"(the batch logged as global step {batch} when training started from step 0); stopping before the "
            "fairness weights spread them. Check the reward model / reward function."
        )

    label_names = None
    if config.label_key is not None:
        labels = []
        for exp, carried_labels in zip(experiences, carried):
            if carried_labels is None or len(carried_labels) != len(exp.rewards):
                raise HostMismatchError(
                    f"openrlhf-fair: --fair_unit {config.unit} needs each sample's label, but an experience arrived "
                    "without it: the label patches (openrlhf_fair.features.labels) did not run in the process "
                    "that generated the samples"
                )
            labels.extend(carried_labels)
        if any(label is None for label in labels):
            raise FairnessInputError(
                f"openrlhf-fair: --fair_unit {config.unit}: a sample's prompt was not found in the prompt dataset, "
                "so its label is unknown (the rollout engine must return the prompt it was given)"
            )
        agent_ids, label_names = label_agent_ids(labels)
        sample_keys = labels
    elif config.unit == "prompt":
        index = [i for exp in experiences for i in exp.index]
        agent_ids = prompt_agent_ids(index, host_arg(maker.strategy.args, "rollout.n_samples_per_prompt"))
        sample_keys = [prompt for exp in experiences for prompt in (getattr(exp, "prompts", None) or [])]
    else:
        agent_ids = torch.arange(rewards.numel())
        sample_keys = []  # --fair_history is refused for unit sample: every sample is a new agent

    shaping = fairness_weights(rewards, agent_ids, config)
    history_metrics = {}
    if config.history:  # weights from the remembered allocations; the batch's own F, U, ... are still logged
        if len(sample_keys) != rewards.numel():
            raise HostMismatchError(
                f"openrlhf-fair: --fair_history with --fair_unit {config.unit} names each agent by its prompt, but "
                f"the experiences carry {len(sample_keys)} prompts for {rewards.numel()} samples (Experience.prompts)"
            )
        keys = agent_keys(shaping.agent_ids, sample_keys)
        remembered, state["history"] = remembered_allocation(shaping.log_allocation, keys, state["history"],
                                                             config.history)
        own = shaping.metrics()
        shaping = fairness_weights(rewards, agent_ids, config, log_allocation=remembered)
        history_metrics = {"history_" + key: value for key, value in shaping.metrics().items()
                           if key in ("F", "jain", "gini", "utility")}
        history_metrics["history_agents"] = float(len(state["history"]))
    if shaping.num_agents == 1 and "one_agent" not in state["warned"]:
        state["warned"].add("one_agent")
        _log(
            f"openrlhf-fair: the rollout batch has one agent (--fair_unit {config.unit}), so every fairness weight "
            "is 1 and fairness shaping does nothing; use more prompts per batch or another --fair_unit. "
            "(This warning is shown once.)",
            warning=True,
        )

    if shaping.num_clipped > CLIPPED_WARNING_FRACTION * rewards.numel() and "clipped" not in state["warned"]:
        state["warned"].add("clipped")
        _log(
            f"openrlhf-fair: {shaping.num_clipped} of {rewards.numel()} fairness weights hit --fair_weight_clip "
            f"{list(config.weight_clip)} in rollout batch {batch} (U = mean sigmoid(reward / T) = {shaping.utility:.3g}). "
            "F's pull grows like 1/U: with rewards far below 0, centre them (--reward.normalize_enable, or a reward "
            "function around 0), raise --fair_temperature, or lower --fair_reg. (Shown once; see fairness/clipped_frac.)",
            warning=True,
        )
    measures = shaping.metrics()
    if config.history:
        measures.update({key: own[key] for key in ("F", "jain", "gini", "utility")}, **history_metrics)
    constants = {METRIC_NAMESPACE + key: value for key, value in measures.items()}
    if label_names is not None:
        means = row_group_means(rewards.unsqueeze(0), shaping.agent_ids.unsqueeze(0), len(label_names))[0][0]
        shown = label_names[:MAX_LABEL_METRICS]
        if len(label_names) > MAX_LABEL_METRICS and "many_labels" not in state["warned"]:
            state["warned"].add("many_labels")
            _log(f"openrlhf-fair: {len(label_names)} labels in one batch; logging mean reward for the first "
                 f"{MAX_LABEL_METRICS} (sorted) only. (Shown once.)", warning=True)
        for k, name in enumerate(shown):
            constants[_metric_name(name)] = float(means[k])

    # Per-sample columns get one small contiguous block per experience (a view into a batch-wide tensor would
    # pickle the whole batch with every experience); batch constants are shared by experiences of one size
    # (read-only: OpenRLHF only reads, splits and re-stacks info tensors).
    per_sample = torch.stack([shaping.sample_weights.to(torch.float32), rewards.to(torch.float32)])
    shared: dict[int, dict] = {}
    start = 0
    for exp, size in zip(experiences, lengths):
        weight, raw_reward = per_sample[:, start:start + size].clone()
        start += size
        if config.enabled:
            exp.advantages = exp.advantages * weight.to(exp.advantages.device, exp.advantages.dtype).unsqueeze(-1)
        if size not in shared:
            shared[size] = {key: torch.full((size,), value, dtype=torch.float32) for key, value in constants.items()}
        exp.info[METRIC_NAMESPACE + "weight"] = weight
        exp.info[METRIC_NAMESPACE + "raw_reward"] = raw_reward
        exp.info.update(shared[size])
        if exp.rewards.device.type != "cpu":  # OpenRLHF makes experience on CPU; keep info beside the rewards
            for key in (METRIC_NAMESPACE + "weight", METRIC_NAMESPACE + "raw_reward", *constants):
                exp.info[key] = exp.info[key].to(exp.rewards.device)

    _log(
        f"[Fairness shaping] batch {batch}: {rewards.numel()} samples, {shaping.num_agents} agents ({config.unit}), "
        f"F={constants[METRIC_NAMESPACE + 'F']:.4f}"
        + (f" (remembered: {constants[METRIC_NAMESPACE + 'history_F']:.4f})" if config.history else "")
        + f", weights in [{constants[METRIC_NAMESPACE + 'weight_min']:.3f}, "
        f"{constants[METRIC_NAMESPACE + 'weight_max']:.3f}], {shaping.num_clipped} clipped"
        + ("" if config.enabled else " (measure only: advantages unchanged)")
    )
    return experiences


def _experience_call_site(original):
    """The runtime call site of the experience hook point (what `patches/` writes into the host method)."""

    @functools.wraps(original)
    def compute_advantages_and_returns(self, experiences, *args, **kwargs):
        import torch

        experiences = original(self, experiences, *args, **kwargs)
        with torch.no_grad():
            return extension_hooks.apply_experience_hooks(self, experiences)

    return compute_advantages_and_returns


# --------------------------------------------------------------------------------------------- checkpoints
def _save_call_site(original):
    """`BasePPOTrainer.save_logs_and_checkpoints`: the remembered allocations go into the checkpoint's client
    states (saved by DeepSpeed with the actor) under HISTORY_CHECKPOINT_KEY."""

    @functools.wraps(original)
    def save_logs_and_checkpoints(self, global_step, logs_dict=None, client_states=None, *args, **kwargs):
        maker = getattr(self, "experience_maker", None)
        if maker is not None:
            client_states = {**(client_states or {}), HISTORY_CHECKPOINT_KEY: dict(_state(maker)["history"])}
        return original(self, global_step, logs_dict, client_states, *args, **kwargs)

    return save_logs_and_checkpoints


def _load_call_site(original):
    """`BasePPOTrainer.init_checkpoint_states`: a resumed run starts from the checkpoint's remembered allocations."""

    @functools.wraps(original)
    def init_checkpoint_states(self, *args, **kwargs):
        states = original(self, *args, **kwargs)
        history = states.pop(HISTORY_CHECKPOINT_KEY, None) if isinstance(states, dict) else None
        if history is not None:
            _state(self.experience_maker)["history"] = dict(history)
            _log(f"openrlhf-fair: --fair_history resumed with the remembered allocations of {len(history)} agents")
        return states

    return init_checkpoint_states


def keep_history_in_checkpoints() -> None:
    """Save and restore --fair_history's state with OpenRLHF's checkpoints, once this process imports the PPO
    trainer (registered before the trainer module is imported, or after it is complete)."""

    def patch(module) -> None:
        if CHECKPOINT_PATCH_ID in _active:
            return
        native_hooks.require_runtime_patching("--fair_history (its state saved with the checkpoints)")
        trainer = require_attribute(module, "BasePPOTrainer", "the PPO trainer that saves checkpoints")
        undos = [patch_attribute(trainer, "save_logs_and_checkpoints", _save_call_site, CHECKPOINT_PATCH_ID)]
        try:
            undos.append(patch_attribute(trainer, "init_checkpoint_states", _load_call_site, CHECKPOINT_PATCH_ID))
        except BaseException:
            undo_all(undos)()
            raise

        def undo() -> None:
            undo_all(undos)()
            _active.pop(CHECKPOINT_PATCH_ID, None)

        _active[CHECKPOINT_PATCH_ID] = (None, undo)

    ray_workers.when_imported(TRAINER_MODULE, patch)


def undo_history_checkpoints() -> None:
    entry = _active.get(CHECKPOINT_PATCH_ID)
    if entry is not None:
        entry[1]()


# --------------------------------------------------------------------------------------------- apply
def apply_in_process(config: PPOFairnessConfig) -> Callable[[], None]:
    """Patch (or hook) this process's experience maker for ``config`` now; return the undo function.

    Applying the same config twice is harmless; a different config while one is active is an error.
    """
    import importlib

    if PATCH_ID in _active:
        active, undo = _active[PATCH_ID]
        if active != config:
            raise ValueError(
                f"openrlhf-fair: PPO fairness is already active with {active}; undo it before applying {config}"
            )
        return lambda: None

    host = importlib.import_module(HOST_MODULE)
    maker = require_attribute(host, "RemoteExperienceMaker", "the PPO experience maker")
    require_attribute(maker, "compute_advantages_and_returns", "where the rollout batch's advantages are computed")
    if config.label_key is not None:  # checked before anything is registered or patched
        native_hooks.require_runtime_patching(f"--fair_unit {config.unit} (carrying the label column)")
    undos = []

    def undo() -> None:
        undo_all(undos)()
        _active.pop(PATCH_ID, None)

    try:  # all or nothing: a host symbol missing half-way leaves nothing patched
        native = native_hooks.use_native_hook("experience")
        if not native:
            undos.append(patch_attribute(maker, "compute_advantages_and_returns", _experience_call_site, PATCH_ID))
        undos.append(native_hooks.register_experience_hook(
            lambda m, experiences: shape_experiences(m, experiences, config), HOOK_ID, settings=config, native=native))
        if config.label_key is not None:
            from openrlhf_fair.features import labels

            undos.append(labels.apply_label_column(config.label_key))
            undos.append(labels.apply_label_tags(config.label_key))
    except BaseException:
        undo()
        raise

    _active[PATCH_ID] = (config, undo)
    return undo


def apply_in_worker(payload: dict) -> None:
    """Run in each Ray actor process that unpickles OpenRLHF's args (via `host.ray_workers`).

    Lazy: patches when this process imports the experience maker (at once if it already has), so processes
    that never make experience (vLLM engines, model actors) import nothing because of us.
    """
    config = PPOFairnessConfig.from_payload(payload)
    if config.history:  # first: the trainer module imports the experience maker while it is being imported
        keep_history_in_checkpoints()
    ray_workers.when_imported(HOST_MODULE, lambda _module: apply_in_process(config))


def apply_fairness(config: PPOFairnessConfig) -> Callable[[], None]:
    """Apply PPO fairness shaping here and in every Ray actor of the run; return the undo function.

    Nothing is patched for ``config=None``. Runs in the driver before OpenRLHF's CLI parses its arguments.
    """
    if config is None:
        return lambda: None
    if not isinstance(config, PPOFairnessConfig):
        raise TypeError(f"openrlhf-fair: apply_fairness for train_ppo_ray needs a PPOFairnessConfig, got {type(config).__name__}")
    undo_here = apply_in_process(config)
    try:
        if config.history:
            keep_history_in_checkpoints()
        undo_carry = ray_workers.carry_to_workers(WORKER_TARGET, config.to_payload())
    except BaseException:  # all or nothing, as apply_in_process
        undo_history_checkpoints()
        undo_here()
        raise
    print(f"[openrlhf-fair] {config.describe()} (carried to OpenRLHF's Ray actors)", file=sys.stderr, flush=True)

    def undo() -> None:
        undo_carry()
        undo_history_checkpoints()
        undo_here()

    return undo


__all__ = [
    "LABEL_INFO_KEY",
    "METRIC_NAMESPACE",
    "apply_fairness",
    "apply_in_process",
    "apply_in_worker",
    "shape_experiences",
]

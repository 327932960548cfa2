"""The label patches: a data column carried through OpenRLHF's datasets to where fairness reads it.

These are the only features with no hook point in `patches/` (`host.native_hooks`), so they are runtime patches
on every host (``OPENRLHF_FAIR_PATCH_MODE=native`` refuses them). Each is applied only with its flag; nothing
happens at import time. This module is the one owner of the host symbols they wrap:

- ``--fairness_group_key KEY`` (train_rm, train_dpo; applied by `host.pairwise_trainer`): RewardDataset
  (openrlhf/datasets/reward_dataset.py) ``__init__``, ``process_data``, ``__getitem__``, ``collate_fn``. Its batches
  are a fixed 5-tuple (chosen_ids, chosen_mask, reject_ids, reject_mask, extras); we keep that tuple: the 5th
  element becomes a `GroupTaggedExtras`, a list equal to the host's own extras that also carries ``.group_ids``
  (one int per pair) and ``.group_names`` (id -> label). The label is read where the host reads each raw row
  (``process_data``) and rides in that row's "extra" value through the host's map and filter, so it stays with
  exactly the rows the host keeps (DPO drops over-long prompts); ``__init__`` then restores the host's own extras
  and keeps the ids.
- ``--fair_unit label:KEY`` (train_ppo_ray; applied by `host.experience_maker` in the process that makes the
  samples): PromptDataset (openrlhf/datasets/prompts_dataset.py) ``__init__`` records, from the same rows,
  ``openrlhf_fair_label_of``: prompt text -> str(row[KEY]) (or, when the column is missing or a prompt has two
  labels, ``openrlhf_fair_label_error``); ``SamplesGenerator._process_response_into_experience``
  (openrlhf/trainer/ppo_utils/samples_generator.py; experience_maker.py in 0.9.3 - 0.9.8, found by `host.compat`)
  then puts each sample's label into ``experience.info["fairness/label"]``, a per-sample list that OpenRLHF's
  concatenation keeps and that `host.experience_maker` pops before anything is logged. Keyed by prompt text
  because that is what reaches the experience (``Experience.prompts``) after generation.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

from openrlhf_fair.errors import AddonError, HostMismatchError, GroupKeyError, LabelColumnError
from openrlhf_fair.host.patching import patch_attribute, require_attribute, undo_all

GROUP_LABELS_PATCH_ID = "openrlhf_fair.reward_dataset.group_labels"
LABEL_COLUMN_PATCH_ID = "openrlhf_fair.prompts_dataset.label_column"
LABEL_TAGS_PATCH_ID = "openrlhf_fair.samples_generator.label_tags"
LABELLED_EXTRA = "host_extra"  # process_data's "extra" value, next to the row's label, until __init__ ends
LABEL_MAP_ATTR = "openrlhf_fair_label_of"
LABEL_ERROR_ATTR = "openrlhf_fair_label_error"
LABEL_INFO_KEY = "fairness/label"  # also used by host.experience_maker, which pops it
CACHE_ATTR = "_openrlhf_fair_label_of"


def _wrap_init(body: Callable) -> Callable[[Callable], Callable]:
    """A patch factory for a dataset's ``__init__``: ``body(self, arguments, init)`` runs instead, with the host's
    arguments bound by name and ``init()`` calling the original with them."""

    def make(original):
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            body(self, bound.arguments, lambda: original(*bound.args, **bound.kwargs))

        return __init__

    return make


# --------------------------------------------------------------------------------------------- group key (RM, DPO)
class GroupTaggedExtras(list):
    """The host's per-pair extras (margins, or DPO prompt lengths) plus the pairs' group ids and group names."""

    def __init__(self, extras, group_ids, group_names) -> None:
        super().__init__(extras)
        self.group_ids = list(group_ids)
        self.group_names = list(group_names)


def check_group_key_with_host_args(group_key: str, host_args) -> None:
    """Refuse host settings the group labels cannot follow (before any data is processed)."""
    from openrlhf_fair.host.compat import host_arg

    if host_arg(host_args, "ds.packing_samples", False):
        raise GroupKeyError(
            f"--fairness_group_key {group_key} is not supported with --ds.packing_samples (untested on the host's "
            "packed batches): drop one of the two flags"
        )


def _wrap_process_data(group_key: str) -> Callable[[Callable], Callable]:
    """The host's per-row call site, which sees the raw row: its "extra" value travels on with the row's label
    through the host's map and filter, so the label stays with exactly the rows the host keeps."""

    def make(original):
        @functools.wraps(original)
        def process_data(self, data):
            processed = original(self, data)
            processed["extra"] = {LABELLED_EXTRA: processed["extra"], "label": str(data[group_key])}
            return processed

        return process_data

    return make


def _group_labels_init(group_key: str, self, arguments, init) -> None:
    dataset, strategy = arguments["dataset"], arguments["strategy"]
    check_group_key_with_host_args(group_key, strategy.args)
    columns = list(dataset.column_names)
    if group_key not in columns:
        raise GroupKeyError(
            f"--fairness_group_key {group_key}: the dataset has no column '{group_key}' "
            f"(its columns: {', '.join(columns)})"
        )
    init()
    extras = list(self.extras)
    if not all(isinstance(extra, dict) and LABELLED_EXTRA in extra for extra in extras):
        raise HostMismatchError(
            "openrlhf-fair: RewardDataset.__init__ no longer keeps process_data's 'extra' per row; the "
            "group-label patch needs updating for this OpenRLHF version"
        )
    self.extras = [extra[LABELLED_EXTRA] for extra in extras]  # the host's own values again
    labels = [extra["label"] for extra in extras]
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    self.fair_group_names = names
    self.fair_group_ids = [index[label] for label in labels]


def _wrap_getitem(original):
    @functools.wraps(original)
    def __getitem__(self, idx):
        item = original(self, idx)
        ids = getattr(self, "fair_group_ids", None)
        return item if ids is None else (*item, ids[idx])

    return __getitem__


def _wrap_collate_fn(original):
    @functools.wraps(original)
    def collate_fn(self, item_list):
        names = getattr(self, "fair_group_names", None)
        if names is None:
            return original(self, item_list)
        batch = original(self, [item[:-1] for item in item_list])
        if not (isinstance(batch, tuple) and len(batch) == 5):
            raise HostMismatchError(
                "openrlhf-fair: RewardDataset.collate_fn no longer returns a 5-tuple; the group-label patch needs "
                "updating for this OpenRLHF version"
            )
        return (*batch[:4], GroupTaggedExtras(batch[4], [item[-1] for item in item_list], names))

    return collate_fn


def apply_group_labels(group_key: str) -> Callable[[], None]:
    """Patch RewardDataset so batches carry ``group_key`` labels; return the undo function."""
    from openrlhf.datasets import reward_dataset as host

    cls = require_attribute(host, "RewardDataset", "the preference dataset of train_rm / train_dpo")
    for name in ("__init__", "process_data", "__getitem__", "collate_fn"):
        require_attribute(cls, name, "RewardDataset method wrapped for --fairness_group_key")
    init = _wrap_init(functools.partial(_group_labels_init, group_key))
    undos = [  # every symbol was checked above, so these cannot fail half-way
        patch_attribute(cls, "__init__", init, f"{GROUP_LABELS_PATCH_ID}.init"),
        patch_attribute(cls, "process_data", _wrap_process_data(group_key), f"{GROUP_LABELS_PATCH_ID}.process_data"),
        patch_attribute(cls, "__getitem__", _wrap_getitem, f"{GROUP_LABELS_PATCH_ID}.getitem"),
        patch_attribute(cls, "collate_fn", _wrap_collate_fn, f"{GROUP_LABELS_PATCH_ID}.collate_fn"),
    ]
    return undo_all(undos)


# --------------------------------------------------------------------------------------------- label:KEY (PPO)
def _label_column_init(key: str, self, arguments, init) -> None:
    dataset = arguments["dataset"]
    init()
    label_of, error = None, None
    columns = getattr(dataset, "column_names", None)
    if columns is not None and key not in columns:
        error = f"--fair_unit label:{key}: the prompt dataset has no column '{key}' (its columns: {', '.join(columns)})"
    else:
        values = list(dataset[key]) if columns is not None else [row[key] for row in dataset]
        if len(values) != len(self.prompts):
            raise LabelColumnError(
                f"--fair_unit label:{key}: {len(values)} labels for {len(self.prompts)} prompts; the host's "
                "PromptDataset no longer keeps one prompt per row"
            )
        label_of = {}
        for prompt, value in zip(self.prompts, values):
            label = str(value)
            if label_of.setdefault(prompt, label) != label:
                error = (
                    f"--fair_unit label:{key}: the prompt {prompt[:80]!r} appears with two labels "
                    f"({label_of[prompt]!r} and {label!r}); samples are matched to labels by prompt text, so "
                    "deduplicate the prompts or make their labels agree"
                )
                label_of = None
                break
    # Not raised here: the same class builds the eval dataset, which needs no labels. The samples
    # generator raises `error` for the training dataset before the first rollout batch is used.
    setattr(self, LABEL_MAP_ATTR, label_of)
    setattr(self, LABEL_ERROR_ATTR, error)


def apply_label_column(key: str) -> Callable[[], None]:
    """Patch PromptDataset.__init__ to record ``prompt -> label`` from column ``key``; return the undo."""
    from openrlhf.datasets import prompts_dataset

    cls = require_attribute(prompts_dataset, "PromptDataset", "the PPO prompt dataset")
    require_attribute(cls, "__init__", "PromptDataset construction")
    init = _wrap_init(functools.partial(_label_column_init, key))
    return patch_attribute(cls, "__init__", init, f"{LABEL_COLUMN_PATCH_ID}.{key}")


def _label_map(generator, key: str) -> dict:
    cached = getattr(generator, CACHE_ATTR, None)
    if cached is not None:
        return cached
    label_of: dict = {}
    loaders = [("training", generator.prompts_dataloader), ("eval", getattr(generator, "eval_dataloader", None))]
    for role, loader in loaders:
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            continue
        if not hasattr(dataset, LABEL_MAP_ATTR):
            raise HostMismatchError(
                f"openrlhf-fair: --fair_unit label:{key}: the prompt dataset was built without the label patch "
                "(openrlhf_fair.features.labels.apply_label_column) in this process"
            )
        error = getattr(dataset, LABEL_ERROR_ATTR, None)
        if error is not None:
            if role == "training":
                raise LabelColumnError(error)
            continue  # eval samples never reach the shaping; they need no label
        for prompt, label in getattr(dataset, LABEL_MAP_ATTR).items():
            label_of.setdefault(prompt, label)
    setattr(generator, CACHE_ATTR, label_of)
    return label_of


def _wrap_process(key: str) -> Callable[[Callable], Callable]:
    def make(original):
        @functools.wraps(original)
        def _process_response_into_experience(self, *args, **kwargs):
            experience = original(self, *args, **kwargs)
            label_of = _label_map(self, key)
            experience.info[LABEL_INFO_KEY] = [label_of.get(prompt) for prompt in experience.prompts]
            return experience

        return _process_response_into_experience

    return make


def apply_label_tags(key: str) -> Callable[[], None]:
    """Patch the samples generator to tag samples with their ``key`` label; return the undo."""
    import importlib

    from openrlhf_fair.host.compat import require_family

    samples_generator = importlib.import_module(require_family().samples_generator_module)
    cls = require_attribute(samples_generator, "SamplesGenerator", "the PPO rollout sample generator")
    require_attribute(cls, "_process_response_into_experience", "where a rollout response becomes an Experience")
    return patch_attribute(cls, "_process_response_into_experience", _wrap_process(key), f"{LABEL_TAGS_PATCH_ID}.{key}")

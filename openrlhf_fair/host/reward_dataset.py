"""Carry a group label column (``--fairness_group_key``) through OpenRLHF's RewardDataset to the trainer.

The host's RewardDataset keeps only prompt/chosen/rejected/margin and its batches are a fixed 5-tuple
(chosen_ids, chosen_mask, reject_ids, reject_mask, extras). We keep that tuple: the 5th element becomes a
`GroupTaggedExtras`, a list equal to the host's own extras that also carries ``.group_ids`` (one int per pair)
and ``.group_names`` (id -> label). The label is read where the host reads each raw row (``process_data``) and
rides in that row's "extra" value through the host's map and filter, so it stays with exactly the rows the host
keeps (DPO drops over-long prompts); ``__init__`` then restores the host's own extras and keeps the ids.
Patched only when a group key is set; nothing happens at import time.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

from openrlhf_fair.config import AddonError
from openrlhf_fair.host.patching import HostMismatchError, patch_attribute, require_attribute, undo_all

PATCH_ID = "openrlhf_fair.reward_dataset.group_labels"
LABELLED_EXTRA = "host_extra"  # process_data's "extra" value, next to the row's label, until __init__ ends


class GroupTaggedExtras(list):
    """The host's per-pair extras (margins, or DPO prompt lengths) plus the pairs' group ids and group names."""

    def __init__(self, extras, group_ids, group_names) -> None:
        super().__init__(extras)
        self.group_ids = list(group_ids)
        self.group_names = list(group_names)


class GroupKeyError(AddonError, ValueError):
    """``--fairness_group_key`` cannot be used with this dataset or these host flags."""


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


def _wrap_init(group_key: str) -> Callable[[Callable], Callable]:
    def make(original):
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            dataset, strategy = bound.arguments["dataset"], bound.arguments["strategy"]
            check_group_key_with_host_args(group_key, strategy.args)
            columns = list(dataset.column_names)
            if group_key not in columns:
                raise GroupKeyError(
                    f"--fairness_group_key {group_key}: the dataset has no column '{group_key}' "
                    f"(its columns: {', '.join(columns)})"
                )
            original(*bound.args, **bound.kwargs)
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

        return __init__

    return make


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
    undos = [  # every symbol was checked above, so these cannot fail half-way
        patch_attribute(cls, "__init__", _wrap_init(group_key), f"{PATCH_ID}.init"),
        patch_attribute(cls, "process_data", _wrap_process_data(group_key), f"{PATCH_ID}.process_data"),
        patch_attribute(cls, "__getitem__", _wrap_getitem, f"{PATCH_ID}.getitem"),
        patch_attribute(cls, "collate_fn", _wrap_collate_fn, f"{PATCH_ID}.collate_fn"),
    ]

    return undo_all(undos)

"""Keep a label column (``--fair_unit label:KEY``) of OpenRLHF's PromptDataset (openrlhf/datasets/prompts_dataset.py).

The host's PromptDataset keeps only prompt, label (``--data.label_key``, the reward function's target), image and
datasource of each row. This patch wraps ``__init__`` (calling the original) and, from the same rows, records
``openrlhf_fair_label_of``: prompt text -> str(row[KEY]) (or, when the column is missing or a prompt has two
labels, ``openrlhf_fair_label_error``). `host.samples_generator` reads it to tag each sample.
Keyed by prompt text because that is what reaches the experience (``Experience.prompts``) after generation.
Patched only with ``label:KEY``; nothing happens at import time.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

from openrlhf_fair.config import AddonError
from openrlhf_fair.host.patching import patch_attribute, require_attribute

PATCH_ID = "openrlhf_fair.prompts_dataset.label_column"
LABEL_MAP_ATTR = "openrlhf_fair_label_of"
LABEL_ERROR_ATTR = "openrlhf_fair_label_error"


class LabelColumnError(AddonError, ValueError):
    """``--fair_unit label:KEY`` cannot be served by this prompt dataset."""


def _wrap_init(key: str) -> Callable[[Callable], Callable]:
    def make(original):
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            dataset = bound.arguments["dataset"]
            original(*bound.args, **bound.kwargs)
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

        return __init__

    return make


def apply_label_column(key: str) -> Callable[[], None]:
    """Patch PromptDataset.__init__ to record ``prompt -> label`` from column ``key``; return the undo."""
    from openrlhf.datasets import prompts_dataset

    cls = require_attribute(prompts_dataset, "PromptDataset", "the PPO prompt dataset")
    require_attribute(cls, "__init__", "PromptDataset construction")
    return patch_attribute(cls, "__init__", _wrap_init(key), f"{PATCH_ID}.{key}")

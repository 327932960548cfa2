"""Tag each generated sample with its prompt's label (openrlhf/trainer/ppo_utils/samples_generator.py; in
OpenRLHF 0.9.3 - 0.9.8 the class lives in experience_maker.py, which `host.compat` finds).

For ``--fair_unit label:KEY``: wraps ``SamplesGenerator._process_response_into_experience`` (calling the
original) and puts the label recorded by `host.prompts_dataset` into ``experience.info["fairness/label"]``, a
per-sample list that OpenRLHF's concatenation keeps and that the experience-maker patch pops before anything
is logged. Runs in the process that generates samples (the PPO trainer actor, or the async generator actor),
which may not be the one that makes experience.
"""

from __future__ import annotations

import functools
from typing import Callable

from openrlhf_fair.host.patching import HostMismatchError, patch_attribute, require_attribute

PATCH_ID = "openrlhf_fair.samples_generator.label_tags"
LABEL_INFO_KEY = "fairness/label"  # also used by host.experience_maker, which pops it
CACHE_ATTR = "_openrlhf_fair_label_of"


def _label_map(generator, key: str) -> dict:
    cached = getattr(generator, CACHE_ATTR, None)
    if cached is not None:
        return cached
    from openrlhf_fair.host.prompts_dataset import LABEL_ERROR_ATTR, LABEL_MAP_ATTR, LabelColumnError

    label_of: dict = {}
    loaders = [("training", generator.prompts_dataloader), ("eval", getattr(generator, "eval_dataloader", None))]
    for role, loader in loaders:
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            continue
        if not hasattr(dataset, LABEL_MAP_ATTR):
            raise HostMismatchError(
                f"openrlhf-fair: --fair_unit label:{key}: the prompt dataset was built without the label patch "
                "(openrlhf_fair.host.prompts_dataset) in this process"
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
    return patch_attribute(cls, "_process_response_into_experience", _wrap_process(key), f"{PATCH_ID}.{key}")

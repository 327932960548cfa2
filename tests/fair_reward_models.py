"""Random tiny Llama reward models saved the way `openrlhf train_rm` saves them (value head `score`), for the
report's and the audit's end-to-end tests."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


@contextlib.contextmanager
def flash_attn_served():
    """The flash_attn import stand-in while the block runs, where flash_attn is not installed (OpenRLHF's models
    import it at module top)."""
    from openrlhf_fair.cpu_backend.stand_ins import install, uninstall

    installed = install("flash_attn")
    try:
        yield
    finally:
        if installed:
            uninstall("flash_attn")


def save_tiny_reward_models(root: Path, seeds=(1, 2)):
    """(base model folder, [one reward model folder per seed]); the value head is drawn N(0, 1) so that rewards are
    of order 1 and margins differ visibly. Needs OpenRLHF importable (`flash_attn_served`)."""
    from openrlhf.models import get_llm_for_sequence_regression
    from openrlhf.utils import get_tokenizer

    from openrlhf_fair.fixtures import build_tiny_llama

    base = build_tiny_llama(root / "tiny_base")
    paths = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = get_llm_for_sequence_regression(
            str(base), "reward", init_value_head=True, attn_implementation="eager", param_dtype="bf16"
        )
        model.score.weight.data.normal_(0.0, 1.0)
        tokenizer = get_tokenizer(str(base), model, "left", None)
        path = root / f"rm{seed}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return base, paths

"""Loading saved OpenRLHF reward models and scoring responses with them, batched.

Tokenisation is OpenRLHF's own `RewardDataset` (prompt + response + eos, right-truncated at max_len, last token
forced to eos), so a model is scored on exactly what it was trained on. That includes the host quirk: a pair
whose prompt fills max_len is scored on identical chosen/rejected tokens (margin 0, counted wrong, as in
OpenRLHF's own accuracy); `ScoredRun.identical` marks such pairs.

Rewards are the RAW value-head outputs (OpenRLHF's `normalize_reward` off). openrlhf is imported inside the
functions that load and run models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from openrlhf_fair.checks.tokenizer import TokenizedPairs, identical_after_truncation, missing_eos_message, tokenize_pairs, tokenizer_fingerprint
from openrlhf_fair.errors import ReportError

__all__ = ["TokenizedPairs", "check_reward_checkpoint", "identical_after_truncation", "load_reward_model",
           "score_pairs", "score_responses", "tokenize_pairs", "tokenizer_fingerprint", "trained_max_len"]


def check_reward_checkpoint(path: Path) -> str:
    """Fail clearly unless `path` holds an HF model with a trained value head; return the head's prefix."""
    if not path.is_dir():
        raise ReportError(f"model folder not found: {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ReportError(f"{path} is not a saved model (no config.json); pass a folder written by openrlhf train_rm")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        raise ReportError(f"{config_file} is not valid JSON: {e}") from e
    prefix = config.get("value_head_prefix", "score")
    weight_files = sorted(path.glob("*.safetensors"))
    if weight_files:
        from safetensors import safe_open

        keys = []
        try:
            for wf in weight_files:
                with safe_open(str(wf), framework="pt") as f:
                    keys.extend(f.keys())
        except Exception as e:  # a truncated / corrupt file: say which
            raise ReportError(f"cannot read weights {wf}: {e}") from e
        if not any(k == f"{prefix}.weight" or k.startswith(f"{prefix}.") for k in keys):
            raise ReportError(
                f"{path} has no reward head weights ('{prefix}.weight'): it looks like a base model, not a reward "
                "model saved by openrlhf train_rm (its head would be random)"
            )
    elif not list(path.glob("*.bin")):
        raise ReportError(f"{path} has no model weights (*.safetensors or *.bin)")
    return prefix


def load_reward_model(path, *, device: str = "cpu", dtype: str = "float32", attn_implementation: str = "sdpa"):
    """(model, tokenizer) of a saved OpenRLHF reward model, loaded with OpenRLHF's own loader, in eval mode."""
    path = Path(path)
    check_reward_checkpoint(path)
    try:
        from openrlhf.models import get_llm_for_sequence_regression
        from openrlhf.utils import get_tokenizer
    except ImportError as e:  # flash_attn is served by the CLI front (`openrlhf-fair report`), not by this module
        raise ReportError(f"cannot import OpenRLHF's model loader ({e}); run `openrlhf-fair report` (it serves "
                          "OpenRLHF's CUDA-only imports where they are missing)") from e

    try:
        model = get_llm_for_sequence_regression(
            str(path),
            "reward",
            normalize_reward=False,
            attn_implementation=attn_implementation,
            param_dtype="bf16",
        )
        tokenizer = get_tokenizer(str(path), model, "left", None)
    except Exception as e:
        raise ReportError(f"cannot load reward model from {path}: {type(e).__name__}: {e}") from e
    if tokenizer.eos_token is None:

        raise ReportError(missing_eos_message(str(path)))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    model = model.to(device=device, dtype=torch_dtype).eval()
    return model, tokenizer


@torch.no_grad()
def score_pairs(
    model,
    tokenizer,
    rows,
    *,
    max_len: int = 512,
    batch_size: int = 16,
    prompt_key: str | None = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    input_template: str | None = None,
    apply_chat_template: bool = False,
    desc: str = "scoring",
    tokenized: TokenizedPairs | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen rewards, rejected rewards, identical after truncation) per pair, float64 / bool, in the order of
    `rows`; batched, pairs sorted by length to limit padding. `tokenized`: `rows` already tokenised with this
    model's tokenizer (`tokenize_pairs`)."""
    from tqdm import tqdm

    if tokenized is None:
        tokenized = tokenize_pairs(rows, tokenizer, max_len, prompt_key=prompt_key, chosen_key=chosen_key,
                                   rejected_key=rejected_key, input_template=input_template,
                                   apply_chat_template=apply_chat_template)
    items, order = tokenized.items, tokenized.order
    if len(items) != len(rows):
        raise ReportError(f"{desc}: {len(items)} tokenised pairs for {len(rows)} rows")
    device = next(model.parameters()).device
    chosen = torch.empty(len(items), dtype=torch.float64)
    rejected = torch.empty(len(items), dtype=torch.float64)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", file=sys.stderr):
        idx = order[start : start + batch_size]
        c_ids, c_mask, r_ids, r_mask, _ = tokenized.collate_fn([items[i] for i in idx])
        c = model(c_ids.to(device), attention_mask=c_mask.to(device))
        r = model(r_ids.to(device), attention_mask=r_mask.to(device))
        chosen[idx] = c.float().cpu().to(torch.float64)
        rejected[idx] = r.float().cpu().to(torch.float64)
    if not bool(torch.isfinite(chosen).all() and torch.isfinite(rejected).all()):
        raise ReportError(f"{desc}: the model produced NaN/Inf rewards")
    return chosen, rejected, tokenized.identical


def score_responses(model, tokenizer, prompts: list[str], responses: list[str], **kwargs) -> torch.Tensor:
    """Reward of each (prompt, response), float64, tokenised exactly as `score_pairs` does: consecutive responses
    to the same prompt are scored as the chosen and the rejected side of one pair (an odd one out with itself)."""
    sides, i = [], 0
    while i < len(responses):
        j = i + 1 if i + 1 < len(responses) and prompts[i + 1] == prompts[i] else i
        sides.append((i, j))
        i = j + 1
    rows = [{"prompt": prompts[i], "chosen": responses[i], "rejected": responses[j]} for i, j in sides]
    chosen, rejected, _ = score_pairs(model, tokenizer, rows, **kwargs)
    rewards = torch.empty(len(responses), dtype=torch.float64)
    for k, (i, j) in enumerate(sides):
        rewards[j] = rejected[k]
        rewards[i] = chosen[k]
    return rewards


def trained_max_len(path) -> int | None:
    """The max_len a saved model was trained with, where its config.json records it (the add-on's `openrlhf_fair`
    settings), else None."""
    config_file = Path(path) / "config.json"
    try:
        saved = json.loads(config_file.read_text()).get("openrlhf_fair") or {}
    except (OSError, ValueError):
        return None
    value = saved.get("max_len")
    return int(value) if isinstance(value, int) else None

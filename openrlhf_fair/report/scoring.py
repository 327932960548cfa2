"""Loading saved OpenRLHF reward models and scoring responses with them, batched.

Tokenisation is OpenRLHF's own `RewardDataset` (prompt + response + eos, right-truncated at max_len, last token
forced to eos), so a model is scored on exactly what it was trained on. That includes the host quirk: a pair
whose prompt fills max_len is scored on identical chosen/rejected tokens (margin 0, counted wrong, as in
OpenRLHF's own accuracy); `ScoredRun.identical` marks such pairs.

Rewards are the RAW value-head outputs (OpenRLHF's `normalize_reward` off). openrlhf is imported inside the
functions that load and run models.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from openrlhf_fair.report.data import ReportError

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
        from openrlhf_fair.preflight import missing_eos_message

        raise ReportError(missing_eos_message(str(path)))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    model = model.to(device=device, dtype=torch_dtype).eval()
    return model, tokenizer


def _reward_dataset(rows, tokenizer, max_len, prompt_key, chosen_key, rejected_key, input_template, chat):
    """OpenRLHF's RewardDataset over `rows` (one process: the data is small)."""
    from types import SimpleNamespace

    from datasets import Dataset
    from openrlhf.datasets import RewardDataset

    from openrlhf_fair.host.compat import host_args_like

    args = host_args_like({"data.prompt_key": prompt_key, "data.chosen_key": chosen_key,
                           "data.rejected_key": rejected_key, "data.apply_chat_template": chat})
    strategy = SimpleNamespace(args=args)
    keep = [k for k in (prompt_key, chosen_key, rejected_key) if k]
    dataset = Dataset.from_list([{k: row[k] for k in keep} for row in rows])
    return RewardDataset(dataset, tokenizer, max_len, strategy, input_template=input_template,
                         num_processors=None)  # in this process: datasets >= 5 forks a pool even for num_proc=1


@dataclass
class TokenizedPairs:
    """Pairs as OpenRLHF's RewardDataset tokenises them: its items, its collate_fn, which pairs are identical
    after truncation, and the pair order sorted by length (batches then need little padding)."""

    items: list
    collate_fn: Callable
    identical: torch.Tensor  # bool, per pair
    order: list[int]


def tokenize_pairs(
    rows,
    tokenizer,
    max_len: int,
    *,
    prompt_key: str | None = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    input_template: str | None = None,
    apply_chat_template: bool = False,
) -> TokenizedPairs:
    """Tokenise `rows` once; `score_pairs` can then score any model that shares the tokenizer (see
    `tokenizer_fingerprint`) without tokenising again."""
    dataset = _reward_dataset(
        rows, tokenizer, max_len, prompt_key, chosen_key, rejected_key, input_template, apply_chat_template
    )
    if len(dataset) != len(rows):
        raise ReportError(f"RewardDataset kept {len(dataset)} of {len(rows)} pairs; cannot align them with rows")
    items = [dataset[i] for i in range(len(dataset))]
    identical = torch.tensor([bool(torch.equal(it[0], it[2])) for it in items], dtype=torch.bool)
    order = sorted(range(len(items)), key=lambda i: max(items[i][0].shape[-1], items[i][2].shape[-1]))
    return TokenizedPairs(items, dataset.collate_fn, identical, order)


def tokenizer_fingerprint(tokenizer) -> str | None:
    """A digest equal for tokenizers that tokenise the same way (a fast tokenizer's full serialisation plus the
    special tokens, sides and chat template OpenRLHF's RewardDataset uses); None for a tokenizer without a fast
    backend, which is then never shared."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest = hashlib.sha256(backend.to_str().encode())
    digest.update(repr((type(tokenizer).__name__, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token,
                        tokenizer.padding_side, tokenizer.truncation_side,
                        getattr(tokenizer, "chat_template", None))).encode())
    return digest.hexdigest()


def identical_after_truncation(rows, tokenizer, max_len: int, **keys) -> list[bool]:
    """Per pair: are chosen and rejected the same tokens once OpenRLHF's RewardDataset has truncated them?

    Such a pair has margin exactly 0 whatever the model: no training signal, and a sure miss for accuracy.
    `keys`: the keyword arguments of `tokenize_pairs`.
    """
    return tokenize_pairs(rows, tokenizer, max_len, **keys).identical.tolist()


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

"""What OpenRLHF's tokenisation does to the user's data, known before training or scoring: a reward backbone
without an eos token, and pairs whose chosen and rejected responses are the same tokens once truncated.

Tokenisation is OpenRLHF's own `RewardDataset` (imported inside the functions), so these checks see exactly
what training and the report see.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import torch

from openrlhf_fair.errors import ReportError


def missing_eos_message(where: str) -> str:
    """What to say about a reward backbone whose tokenizer has no eos token (BERT-style), before training."""
    return (f"{where}: its tokenizer has no eos token; OpenRLHF's RewardDataset appends one to every response (it "
            "would fail with \"TypeError: endswith first arg must be str\"). Set one in the folder's "
            "tokenizer_config.json, e.g. \"eos_token\": \"[SEP]\" for a BERT-style model")


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

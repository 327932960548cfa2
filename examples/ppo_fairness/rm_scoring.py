"""Score (prompt, response) texts with a reward model saved by `openrlhf train_rm` (here: all-MiniLM-L6-v2).

The text is built the way OpenRLHF's RewardDataset built the training pairs (prompt + response, truncated on the
right at max_len, last token eos) and the reward is read at that eos token, as OpenRLHF's RewardModel does.
Used by the PPO reward function (inside the rollout engine's Ray actor) and by the evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class RewardScorer:
    def __init__(self, path, *, max_len: int = 192, device: str = "cpu"):
        from transformers import AutoTokenizer

        self.path = Path(path)
        self.max_len = max_len
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        if self.tokenizer.eos_token is None:
            raise ValueError(f"{self.path}: the reward model's tokenizer has no eos token")
        self.model = _load_reward_model(self.path).to(device).eval()
        config = json.loads((self.path / "config.json").read_text())
        # train_rm stores the eval rewards' mean and std; standardised rewards have a scale independent of the RM.
        self.mean = float(config.get("mean", 0.0))
        self.std = float(config.get("std", 1.0)) or 1.0

    @torch.no_grad()
    def raw(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> list[float]:
        tok = self.tokenizer
        ids = []
        for prompt, response in zip(prompts, responses):
            row = tok(prompt + " " + response.strip() + " " + tok.eos_token, add_special_tokens=False,
                      truncation=True, max_length=self.max_len)["input_ids"]
            row[-1] = tok.eos_token_id
            ids.append(row)
        rewards = []
        for start in range(0, len(ids), batch_size):
            # right padding: the reward sits at the last attended token
            input_ids, mask = right_padded(ids[start : start + batch_size], tok.pad_token_id or 0)
            out = self.model(input_ids.to(self.device), attention_mask=mask.to(self.device))
            rewards += out.float().cpu().tolist()
        return rewards

    def standardised(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [(r - self.mean) / self.std for r in self.raw(prompts, responses)]


def right_padded(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of token rows padded on the right to the longest one."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return input_ids, mask


def _load_reward_model(path: Path):
    """OpenRLHF's own reward-model loader (imports flash_attn at module top: the CPU backend's stand-in serves)."""
    from openrlhf_fair.cpu_backend.stand_ins import install

    install("flash_attn")  # a no-op where the real package is importable
    from openrlhf.models import get_llm_for_sequence_regression

    model = get_llm_for_sequence_regression(str(path), "reward", normalize_reward=False,
                                            attn_implementation="sdpa", param_dtype="bf16")
    return model.float()

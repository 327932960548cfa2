"""`--reward.remote_url reward_func.py` for the PPO fairness experiment: the demo's Bradley-Terry reward model.

OpenRLHF calls ``reward_func(queries, prompts, labels)`` in the rollout engine's actor, one sample at a time.
``labels`` carries each prompt's text in the reward model's own format (``--data.label_key rm_prompt``); the
response is the query after the chat-templated prompt. The reward is the RM's reward standardised by the mean
and std that train_rm saved. The RM's folder is read from ``reward_model.txt`` beside this file.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rm_scoring import RewardScorer  # noqa: E402

ASSISTANT_MARKER = "<|im_start|>assistant\n"  # SmolLM2's chat template (ChatML)
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
_scorer = None


def response_text(query: str, prompt: str) -> str:
    """The generated part of ``query`` (the engine may have cut the prompt's start to fit --data.max_len)."""
    if query.startswith(prompt):
        response = query[len(prompt):]
    elif ASSISTANT_MARKER in query:
        response = query.rsplit(ASSISTANT_MARKER, 1)[1]
    else:
        response = query
    for marker in END_MARKERS:
        response = response.split(marker)[0]
    return response


def reward_func(queries, prompts, labels):
    global _scorer
    import torch

    if _scorer is None:
        _scorer = RewardScorer((HERE / "reward_model.txt").read_text().strip())
    responses = [response_text(q, p) for q, p in zip(queries, prompts)]
    rewards = torch.tensor(_scorer.standardised(list(labels), responses), dtype=torch.float)
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"rm_reward": rewards}}

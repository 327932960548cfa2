"""`vllm.SamplingParams` stand-in: the fields OpenRLHF sets, with vLLM's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # vLLM: -1 (or 0) disables top-k
    min_p: float = 0.0
    seed: Optional[int] = None
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    logprobs: Optional[int] = None
    skip_special_tokens: bool = True
    ignore_eos: bool = False
    stop: Optional[list] = field(default=None)  # stop strings: not supported by the CPU rollout engine
    stop_token_ids: Optional[list] = field(default=None)
    include_stop_str_in_output: bool = False
    repetition_penalty: float = 1.0

    def clone(self) -> "SamplingParams":
        from copy import deepcopy

        return deepcopy(self)

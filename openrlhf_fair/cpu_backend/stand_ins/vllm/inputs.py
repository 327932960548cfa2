"""`vllm.inputs.TokensPrompt` stand-in (a dict, as in vLLM)."""

from typing import Any, Dict, List, TypedDict


class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: List[int]
    multi_modal_data: Dict[str, Any]

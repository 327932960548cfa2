"""Import stand-in for vLLM, used by openrlhf-fair's CPU backend ONLY when vLLM is not installed.

OpenRLHF's PPO modules import vllm at module top and drive a vLLM ``AsyncLLMEngine`` from their rollout
actor (``openrlhf/trainer/ray/vllm_engine.py``). This package provides exactly the API surface OpenRLHF
0.11.2 uses, backed by `openrlhf_fair.cpu_backend.rollout_engine` (Hugging Face ``generate()`` on CPU,
weights received over gloo). It is put at the END of ``sys.path``, so an installed vllm always wins.
Anything this stand-in cannot serve (tensor parallel > 1, CUDA IPC weight sync, multimodal prompts, ...)
raises `NotImplementedError` naming the flag to change.
"""

__version__ = "0.29.0+openrlhf.fair.cpu"  # the vLLM API OpenRLHF 0.11.2 targets (its `vllm` extra pins 0.29.0)
IS_OPENRLHF_FAIR_STAND_IN = True

from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.engine import AsyncEngineArgs, AsyncLLMEngine  # noqa: E402
from vllm.outputs import CompletionOutput, Logprob, RequestOutput  # noqa: E402

__all__ = [
    "AsyncEngineArgs",
    "AsyncLLMEngine",
    "CompletionOutput",
    "Logprob",
    "RequestOutput",
    "SamplingParams",
]

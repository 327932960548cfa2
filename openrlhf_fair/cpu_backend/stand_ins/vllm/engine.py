"""`vllm.AsyncEngineArgs` / `vllm.AsyncLLMEngine` stand-ins, backed by the CPU rollout engine."""

from __future__ import annotations


class AsyncEngineArgs:
    """Keeps the keyword arguments OpenRLHF passes (model, dtype, seed, tensor_parallel_size, ...)."""

    def __init__(self, model: str | None = None, **kwargs):
        self.model = model
        self.kwargs = dict(kwargs, model=model)


class AsyncLLMEngine:
    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs):
        from openrlhf_fair.cpu_backend.rollout_engine import CpuRolloutEngine

        return CpuRolloutEngine(engine_args.kwargs)

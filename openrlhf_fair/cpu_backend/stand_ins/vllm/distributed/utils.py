"""`vllm.distributed.utils.StatelessProcessGroup` stand-in (used by `openrlhf.utils.distributed_util`)."""

from openrlhf_fair.cpu_backend.rollout_engine import StatelessProcessGroup

__all__ = ["StatelessProcessGroup"]

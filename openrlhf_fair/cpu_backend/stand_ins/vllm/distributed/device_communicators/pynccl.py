"""`PyNcclCommunicator` stand-in: same calls, but the weight broadcast runs over gloo on CPU."""

from openrlhf_fair.cpu_backend.rollout_engine import GlooWeightCommunicator as PyNcclCommunicator

__all__ = ["PyNcclCommunicator"]

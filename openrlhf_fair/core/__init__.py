"""The fairness math: plain torch functions (fairness, measures, losses, reward terms, PPO shaping).

Imports only torch, the standard library and `openrlhf_fair.settings` / `openrlhf_fair.errors`:
never openrlhf, so every function here is tested on any CPU.
"""

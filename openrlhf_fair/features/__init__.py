"""Fairness in OpenRLHF's trainers: pairwise RM/DPO, PPO's experience maker, dataset labels.

Each feature reaches OpenRLHF only through `openrlhf_fair.host`.
"""

"""The single bootstrap path into a Ray actor (`openrlhf_fair.host.ray_workers`): a real Ray actor that receives
OpenRLHF's parsed args gets the PPO fairness patch, lazily, and one that receives args without the setup does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent(
    """
    import argparse, json, os, sys

    from openrlhf_fair.cpu_backend import stand_ins

    for name in ("flash_attn", "vllm"):  # this CPU machine lacks them; OpenRLHF's PPO modules import them
        stand_ins.install(name)
    import ray
    from openrlhf.utils import config as host_config  # the CLI looks hierarchize up when it runs, after our hook
    from openrlhf_fair.cpu_backend.ray_support import stop_local_ray
    from openrlhf_fair.features import experience_maker as hm
    from openrlhf_fair.settings import PPOFairnessConfig

    HOST = "openrlhf.trainer.ppo_utils.experience_maker"


    @ray.remote(num_cpus=0)
    class Probe:
        def __init__(self, args):  # like OpenRLHF's actors: the args arrive with the constructor's arguments
            self.host_imported_at_init = HOST in sys.modules

        def check(self):
            from openrlhf_fair.cpu_backend import stand_ins
            for name in ("flash_attn", "vllm"):
                stand_ins.install(name)
            import importlib
            from openrlhf_fair.features import experience_maker as hm
            from openrlhf_fair.host.patching import is_patched

            maker = importlib.import_module(HOST).RemoteExperienceMaker
            entry = hm._active.get(hm.PATCH_ID)
            config = entry[0] if entry else None
            return {
                "pid": os.getpid(),
                "host_imported_at_init": self.host_imported_at_init,
                "patched": is_patched(maker, "compute_advantages_and_returns", hm.PATCH_ID),
                "config": None if config is None else config.to_payload(),
            }


    config = PPOFairnessConfig(coef=0.5, unit="prompt")
    undo = hm.apply_fairness(config)  # what `openrlhf train_ppo_ray --fair_coef 0.5 --fair_unit prompt` does first
    carried = host_config.hierarchize(argparse.Namespace(**{"algo.advantage.estimator": "gae"}))  # the CLI, next
    undo()
    plain = host_config.hierarchize(argparse.Namespace(**{"algo.advantage.estimator": "gae"}))
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        results = {name: ray.get(Probe.remote(args).check.remote()) for name, args in
                   (("carried", carried), ("plain", plain))}
    finally:
        stop_local_ray()
    print("RESULT " + json.dumps({"driver_pid": os.getpid(), "expected": config.to_payload(),
                                  "carried_setup": repr(getattr(carried, "openrlhf_fair_worker_setup", None)), **results}))
    """
)


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
def test_the_single_bootstrap_path_into_a_ray_actor():
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    run = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    carried, plain = result["carried"], result["plain"]
    assert result["carried_setup"] == "WorkerSetup(openrlhf_fair.features.experience_maker:apply_in_worker)"
    assert carried["pid"] != result["driver_pid"] and plain["pid"] != result["driver_pid"]  # real actor processes
    assert carried["host_imported_at_init"] is False  # lazy: the setup did not import the experience maker
    assert carried["patched"] is True and carried["config"] == result["expected"]
    assert plain["patched"] is False and plain["config"] is None  # args without the setup: nothing patched

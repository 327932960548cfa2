"""CPU patches of OpenRLHF's DeepSpeed strategy (openrlhf/utils/deepspeed/deepspeed.py) and DeepSpeed itself.

- ``init_device_mesh("cuda", ...)`` in ``DeepspeedStrategy.setup_distributed`` builds its mesh on "cpu".
- DeepSpeed JIT-compiles two C++ ops on first use on a CPU machine (the shared-memory all-reduce at
  init, DeepSpeedCPUAdam/FusedAdam at ``deepspeed.initialize``): 4-5 minutes on a fresh machine. The
  shm op is skipped (collectives go through torch.distributed/gloo) and the optimizer config asks for
  torch's AdamW (``"torch_adam": true``, a documented DeepSpeed option); training results were identical.
"""

from __future__ import annotations

import importlib
from typing import Callable

from openrlhf_fair.host.patching import patch_attribute, undo_all

PATCH_ID = "openrlhf_fair.cpu_backend.strategy"


def _cpu_device_mesh(original):
    def init_device_mesh(device_type, *args, **kwargs):
        return original("cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    return init_device_mesh


def _torch_adam(original):
    def get_ds_train_config(self, *args, **kwargs):
        ds_config = original(self, *args, **kwargs)
        optimizer = ds_config.get("optimizer")
        if optimizer is not None and str(optimizer.get("type", "")).lower() in ("adam", "adamw"):
            optimizer.setdefault("params", {})["torch_adam"] = True
        return ds_config

    return get_ds_train_config


def _no_shm_op(original):
    def build_shm_op():
        return None

    return build_shm_op


def apply() -> Callable[[], None]:
    """Patch the strategy module and DeepSpeed's comm backend; return the undo function."""
    # `import deepspeed.comm.torch as m` would give the torch package: deepspeed.comm re-exports `torch`.
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    strategy_module = importlib.import_module("openrlhf.utils.deepspeed.deepspeed")

    undos = [
        patch_attribute(ds_comm_torch, "build_shm_op", _no_shm_op, PATCH_ID),
        patch_attribute(strategy_module, "init_device_mesh", _cpu_device_mesh, PATCH_ID),
        patch_attribute(strategy_module.DeepspeedStrategy, "get_ds_train_config", _torch_adam, PATCH_ID),
    ]

    return undo_all(undos)

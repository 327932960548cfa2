"""CPU patches of OpenRLHF's DeepSpeed strategy (openrlhf/utils/deepspeed/deepspeed.py) and DeepSpeed itself.

- ``init_device_mesh("cuda", ...)`` in ``DeepspeedStrategy.setup_distributed`` builds its mesh on "cpu".
- DeepSpeed JIT-compiles two C++ ops on first use on a CPU machine (the shared-memory all-reduce at
  init, DeepSpeedCPUAdam/FusedAdam for the optimizer): 4-5 minutes on a fresh machine. The shm op is
  skipped (collectives go through torch.distributed/gloo) and the optimizer is torch's AdamW, per release
  family (`host.compat`): nested releases (0.10.2+) have DeepSpeed build it from the config, which then asks
  for ``"torch_adam": true`` (a documented DeepSpeed option; training results were identical); flat releases
  (0.9.3 - 0.10.1) build it in ``DeepspeedStrategy.create_optimizer`` from the module's ``FusedAdam`` /
  ``DeepSpeedCPUAdam``, both AdamW by default with the (params, lr, betas, weight_decay) the host passes,
  which become ``torch.optim.AdamW`` with the same arguments.
"""

from __future__ import annotations

import importlib
from typing import Callable

from openrlhf_fair.host.compat import require_family
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


def _torch_adamw(original):
    def adamw(params, **kwargs):  # the host passes lr, betas, weight_decay; eps defaults to 1e-8 in all three
        import torch

        return torch.optim.AdamW(params, **kwargs)

    return adamw


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
    ]
    if require_family().nested:
        undos.append(patch_attribute(strategy_module.DeepspeedStrategy, "get_ds_train_config", _torch_adam, PATCH_ID))
    else:
        for name in ("FusedAdam", "DeepSpeedCPUAdam"):  # what DeepspeedStrategy.create_optimizer instantiates
            undos.append(patch_attribute(strategy_module, name, _torch_adamw, PATCH_ID))

    return undo_all(undos)

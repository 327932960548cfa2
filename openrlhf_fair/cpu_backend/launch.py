"""Process environment for the CPU backend: loopback rendezvous, a clear error for a busy port, and the
variables that make child processes (torchrun / deepspeed-launcher ranks) run on the CPU backend too.
"""

from __future__ import annotations

import os
import socket
from typing import MutableMapping

from openrlhf_fair.cpu_backend.cli_args import CpuBackendExit

LOOPBACK = "127.0.0.1"
# Set for every rank: DeepSpeed picks its CPU accelerator (gloo) even where CUDA exists.
CHILD_ENV = {"DS_ACCELERATOR": "cpu"}


class PortInUse(CpuBackendExit):
    """The rendezvous port this process must open is taken."""


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like torch's TCPStore: a port left in TIME_WAIT by an earlier run is free, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise PortInUse(
                f"openrlhf-fair CPU backend: MASTER_PORT {port} on {host} is already in use ({error.strerror}); "
                f"another run may still be alive. Pick a free port (MASTER_PORT=..., torchrun --master_port, "
                f"deepspeed --master_port) or unset MASTER_PORT to let the CPU backend choose one."
            ) from None


def prepare_environment(command: str, env: MutableMapping[str, str] | None = None) -> None:
    """Loopback rendezvous for this process and its children; a single trainer process gets a one-rank world.

    The PPO driver (train_ppo_ray) joins no process group itself: OpenRLHF's Ray launcher gives each actor
    its own RANK/WORLD_SIZE/MASTER_PORT, so no world is set up for it here.
    """
    env = os.environ if env is None else env  # looked up now: some libraries replace os.environ
    for key, value in CHILD_ENV.items():
        env.setdefault(key, value)
    env.setdefault("MASTER_ADDR", LOOPBACK)
    if _has_interface("lo"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if command == "train_ppo_ray":
        return
    if "WORLD_SIZE" not in env:
        # Not under a launcher: DeepSpeed would otherwise try MPI discovery (mpi4py) for a one-process world.
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        if "MASTER_PORT" in env:
            check_port_free(env["MASTER_ADDR"], int(env["MASTER_PORT"]))
        else:
            env["MASTER_PORT"] = str(free_port(env["MASTER_ADDR"]))
    elif env.get("RANK") == "0" and env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and "MASTER_PORT" in env:
        # Rank 0 of the deepspeed launcher opens the store itself (torchrun's agent already holds it).
        check_port_free(env["MASTER_ADDR"], int(env["MASTER_PORT"]))


def _has_interface(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def local_world_size(env: MutableMapping[str, str] | None = None) -> int:
    """Ranks on this machine: torchrun's LOCAL_WORLD_SIZE or the deepspeed launcher's LOCAL_SIZE."""
    env = os.environ if env is None else env
    return int(env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or 1)


def balance_threads(env: MutableMapping[str, str] | None = None) -> int | None:
    """Share the cores between the ranks of this machine (torch's intra-op threads); return the count set.

    torchrun already sets OMP_NUM_THREADS=1 for several ranks; the deepspeed launcher does not, and two ranks
    with one thread per core each on 2 cores spin-wait on each other. An explicit OMP_NUM_THREADS wins.
    """
    env = os.environ if env is None else env
    ranks = local_world_size(env)
    if ranks <= 1 or "OMP_NUM_THREADS" in env:
        return None
    import torch

    threads = max(1, len(os.sched_getaffinity(0)) // ranks)
    torch.set_num_threads(threads)
    return threads

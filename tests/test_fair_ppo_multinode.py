"""PPO with `--fair_coef` on a Ray cluster of several nodes on this machine (ray.cluster_utils.Cluster).

The head node has no logical GPUs and no CPUs, so every OpenRLHF actor (the PPOTrainer actor that runs the
experience maker included) is placed on another node. The run is submitted with `ray job submit`, as a
multi-node user does, so its driver runs on the head: the job's logged step metrics carry fairness/*, the
"[Fairness shaping]" line of each step is printed by the PPOTrainer process, and Ray's state API records that
actor on the other node and the job's driver on the head; `openrlhf-fair ppo-report` draws the run's curves from
its TensorBoard logs. Then that node is replaced by one where `import openrlhf_fair` fails (a sitecustomize on
that node only hides the add-on, as on a node where it is not installed) and the command is run by a driver that
joins the cluster with RAY_ADDRESS: the run must fail at once naming openrlhf_fair, never train without fairness.
Every process of the cluster (raylets, GCS, dashboard, workers, drivers) is gone afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fair_processes import MARKER, marked_processes, new_marker
from test_fair_ppo_e2e import REWARD_FN, check_fairness_logged, logged_steps

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep Ray's addresses on 127.0.0.1
    "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "300",  # 30 s was too short on a busy 2-core machine
}
HIDE_ADDON = '''
import sys


class HideOpenrlhfFair:
    """This node has no openrlhf-fair: importing it fails as it does where the package is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "openrlhf_fair" or name.startswith("openrlhf_fair."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HideOpenrlhfFair())
'''


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def raylet_pid(node) -> int:
    (info,) = node.all_processes["raylet"]
    return info.process.pid


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            pid = parent_pid(pid)
        except (OSError, ValueError):
            break
        chain.append(pid)
    return chain


class TwoNodeCluster:
    """A head without GPUs or CPUs (the driver's node) and a node with 8 logical GPUs, all marked for cleanup."""

    def __init__(self, tmp: Path, dashboard_port: int):
        self.marker = new_marker()  # "OPENRLHF_FAIR_TEST_RUN=<id>"
        self.tmp = tmp
        self._saved_env = {k: os.environ.get(k) for k in (MARKER, "PYTHONPATH", *RAY_ENV)}
        os.environ[MARKER] = self.marker.split("=", 1)[1]  # inherited by every process Ray starts
        os.environ.update(RAY_ENV)
        from ray._common.utils import reset_ray_address
        from ray.cluster_utils import Cluster

        self.dashboard_port = dashboard_port  # the job server `ray job submit` talks to
        self.cluster = Cluster()
        try:
            self.cluster.add_node(node_ip_address="127.0.0.1", num_cpus=0, num_gpus=0, include_dashboard=True,
                                  dashboard_host="127.0.0.1", dashboard_port=self.dashboard_port,
                                  object_store_memory=200 * 2**20)
            # Cluster writes /tmp/ray/ray_current_cluster, which a plain ray.init() elsewhere would join.
            reset_ray_address()
            self.head = self.cluster.head_node
            self.address = "127.0.0.1:" + self.head.gcs_address.rsplit(":", 1)[1]
            self.gpu_node = self.add_gpu_node()
        except BaseException:
            kill(self.shutdown())
            raise

    def add_gpu_node(self, pythonpath: str | None = None):
        if pythonpath:
            os.environ["PYTHONPATH"] = pythonpath
        try:
            return self.cluster.add_node(node_ip_address="127.0.0.1", num_cpus=16, num_gpus=8,
                                         object_store_memory=200 * 2**20)
        finally:
            self._restore("PYTHONPATH")

    def _restore(self, key):
        if self._saved_env[key] is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = self._saved_env[key]

    def shutdown(self) -> list[int]:
        """Stop every node; return the pids of the cluster's processes still alive 30 s later."""
        self.cluster.shutdown()
        self._restore(MARKER)
        for key in RAY_ENV:
            self._restore(key)
        deadline = time.monotonic() + 30
        while marked_processes(self.marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        return list(marked_processes(self.marker))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, reserve_port):
    pytest.importorskip("ray.cluster_utils")
    # the dashboard's port (the job server): below the ephemeral range and locked for the module (conftest)
    with reserve_port() as dashboard_port:
        nodes = TwoNodeCluster(tmp_path_factory.mktemp("cluster"), dashboard_port)
        try:
            yield nodes
        finally:
            raylets = [raylet_pid(n) for n in [nodes.head, *nodes.cluster.worker_nodes]]
            leftovers = nodes.shutdown()
            kill(leftovers)  # never leave them running for the rest of the suite
            assert not leftovers, f"processes of the Ray cluster outlived it by 30 s: {leftovers}"
            assert not [pid for pid in raylets if Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat")
                        .read_text().rsplit(")", 1)[1].split()[0] != "Z"], "a raylet is still running"


@pytest.fixture(scope="module")
def ppo_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multinode_data")
    rows = [{"input": f"Question {i}: answer a {'hard' if i % 2 else 'simple'} question.",
             "category": "hard" if i % 2 else "easy"} for i in range(16)]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "reward.py").write_text(REWARD_FN)
    return folder


def ppo_argv(model, data: Path, out: Path) -> list[str]:
    return [str(BIN / "openrlhf"), "--cpu", "train_ppo_ray",
            "--actor.model_name_or_path", str(model), "--actor.num_gpus_per_node", "1",
            "--reward.remote_url", str(data / "reward.py"),
            "--data.prompt_dataset", str(data / "prompts.jsonl"), "--data.input_key", "input",
            "--data.max_samples", "4", "--train.num_episodes", "3",  # 3 steps, each over 2 easy + 2 hard prompts
            "--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "2", "--rollout.micro_batch_size", "4",
            "--train.batch_size", "8", "--train.micro_batch_size", "4",
            "--rollout.max_new_tokens", "8", "--data.max_len", "64",
            "--vllm.num_engines", "1", "--vllm.sync_backend", "gloo",
            "--algo.advantage.estimator", "group_norm", "--algo.kl.init_coef", "0",
            "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"),
            "--fair_coef", "0.5", "--fair_unit", "label:category"]


def run_env(cluster: TwoNodeCluster) -> dict:
    return {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_DEDUP_LOGS": "0",
            "TORCHDYNAMO_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


STATE_QUERY = """
import json, sys
from ray.util.state import list_actors, list_jobs
actors = list_actors(address=sys.argv[1], filters=[("class_name", "=", "PPOTrainer")], detail=True,
                     raise_on_missing_output=False)
supervisors = list_actors(address=sys.argv[1], filters=[("class_name", "=", "JobSupervisor")], detail=True,
                          raise_on_missing_output=False)
jobs = list_jobs(address=sys.argv[1])
print(json.dumps({"actors": [{"pid": a.pid, "node_id": a.node_id, "job_id": a.job_id} for a in actors],
                  "supervisors": [{"name": a.name, "node_id": a.node_id} for a in supervisors],
                  "jobs": [{"job_id": j.job_id, "submission_id": j.submission_id} for j in jobs]}))
"""


def ray_state(cluster: TwoNodeCluster) -> dict:
    """PPOTrainer actors and jobs as Ray's state API records them (a fresh interpreter: Ray reads its address
    settings at import, and this process may have imported Ray before RAY_ENV was set)."""
    result = subprocess.run([sys.executable, "-c", STATE_QUERY, cluster.address], capture_output=True, text=True,
                            timeout=180, env={**os.environ, **RAY_ENV})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_shaping_ran_on_the_gpu_node(cluster: TwoNodeCluster, output: str, steps: list[dict]) -> None:
    """Ray's own records: the PPOTrainer that printed the shaping lines lived on the GPU node, its driver on the head."""
    assert all(step["fairness/num_agents"] == 2.0 for step in steps)  # every rollout batch holds both labels
    trainer_pids = {int(pid) for pid in re.findall(r"\(PPOTrainer pid=(\d+)[,)][^\n]*\[Fairness shaping\]", output)}
    assert len(trainer_pids) == 1, trainer_pids
    state = ray_state(cluster)
    actors = [a for a in state["actors"] if a["pid"] in trainer_pids]
    assert len(actors) == 1, state
    (actor,) = actors
    assert actor["node_id"] == cluster.gpu_node.node_id != cluster.head.node_id
    (job,) = [j for j in state["jobs"] if j["job_id"] == actor["job_id"]]
    assert job["submission_id"], job  # the trainer belongs to the submitted job
    # the job's driver is a subprocess of its JobSupervisor actor, which Ray placed on the head
    (supervisor,) = [a for a in state["supervisors"] if a["name"].endswith(job["submission_id"])]
    assert supervisor["node_id"] == cluster.head.node_id != cluster.gpu_node.node_id, state


def submit_job(cluster: TwoNodeCluster, argv: list[str], timeout: int) -> subprocess.CompletedProcess:
    """`ray job submit` of `argv` to the cluster's job server (on the head), waiting for it and tailing its logs."""
    # Keys the driver's own ray.init sets (OpenRLHF: TOKENIZERS_PARALLELISM, NCCL_DEBUG; the CPU backend also
    # TORCHDYNAMO_DISABLE, ...) must not be in the job's env_vars: Ray refuses to merge the same key twice.
    env_vars = {k: v for k, v in run_env(cluster).items() if k in ("RAY_DEDUP_LOGS", "PATH", MARKER)}
    submit = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{cluster.dashboard_port}",
              "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", *argv]
    return subprocess.run(submit, capture_output=True, text=True, timeout=timeout, env=run_env(cluster))


@pytest.mark.timeout(600)
def test_ppo_fairness_job_runs_on_the_other_node(cluster, tiny_llama, ppo_data, tmp_path):
    argv = ppo_argv(tiny_llama, ppo_data, tmp_path) + ["--logger.tensorboard_dir", str(tmp_path / "tb")]
    result = submit_job(cluster, argv, timeout=420)
    steps = check_fairness_logged(result)  # fairness/* in every logged step; shaping lines from the PPOTrainer
    check_shaping_ran_on_the_gpu_node(cluster, result.stdout + result.stderr, steps)
    # `openrlhf-fair ppo-report` on this real run's TensorBoard logs: the per-group curves are the logged steps
    from openrlhf_fair.report import ppo as ppo_report

    assert ppo_report.main(["--logdir", str(tmp_path / "tb"), "--out", str(tmp_path / "report")]) == 0
    (series,) = json.loads((tmp_path / "report" / "ppo_report.json").read_text()).values()
    for label in ("easy", "hard"):
        curve = series[f"fairness/label_reward/{label}"]
        assert [step for step, _ in curve] == [1, 2, 3]
        assert [value for _, value in curve] == pytest.approx([s[f"fairness/label_reward/{label}"] for s in steps])
    assert [v for _, v in series["fairness/F"]] == pytest.approx([s["fairness/F"] for s in steps])
    assert (tmp_path / "report" / "ppo_report.png").stat().st_size > 10_000


@pytest.mark.timeout(600)
def test_a_node_without_the_addon_fails_loudly(cluster, tiny_llama, ppo_data, tmp_path):
    """The GPU node is replaced by one where openrlhf_fair cannot be imported: no training without fairness."""
    hide = tmp_path / "hide_addon"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_ADDON)
    check = subprocess.run([sys.executable, "-c", "import openrlhf_fair"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(hide)})
    assert "No module named 'openrlhf_fair'" in check.stderr  # what that node's Python says
    cluster.cluster.remove_node(cluster.gpu_node)
    cluster.gpu_node = cluster.add_gpu_node(pythonpath=str(hide))
    started = time.monotonic()
    result = subprocess.run(ppo_argv(tiny_llama, ppo_data, tmp_path), capture_output=True, text=True, timeout=400,
                            env=run_env(cluster), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-6000:]
    assert "No module named 'openrlhf_fair" in output, output[-6000:]
    assert not logged_steps(output) and "[Fairness shaping]" not in output
    print(f"\n[multinode] node without the add-on: exit {result.returncode} after {time.monotonic() - started:.0f} s")

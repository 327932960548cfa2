"""PPO fairness patch against OpenRLHF's real RemoteExperienceMaker.compute_advantages_and_returns.

Fabricated rollout batches (several micro-batches, shuffled prompt order, ragged action masks) go through the
host method with and without the patch, for every advantage estimator; plus the patch checklist (replaced,
twice harmless, undo, moved symbol, nothing when off), the worker-setup carrier and the label carrier.
"""

import argparse
import copy
import math
import pickle
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from fair_reference import ppo_reference_weights

from openrlhf_fair.errors import FairnessInputError, HostMismatchError
from openrlhf_fair.host.patching import ORIGINAL_ATTR, is_patched
from openrlhf_fair.settings import PPOFairnessConfig

ESTIMATORS = ["gae", "reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo", "flash_reinforce"]
N_PROMPTS, N_SAMPLES, MICRO, ACTIONS = 4, 4, 4, 7
LABELS = ["helpful", "harmless", "helpful", "code"]  # label of prompt k


@pytest.fixture(scope="module")
def host():
    """OpenRLHF's PPO modules, importable on CPU via the CPU backend's vllm / flash_attn stand-ins."""
    from openrlhf_fair.cpu_backend import stand_ins

    installed = [name for name in ("flash_attn", "vllm") if stand_ins.install(name)]
    from openrlhf.trainer.ppo_utils import experience as experience_module
    from openrlhf.trainer.ppo_utils import experience_maker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    yield SimpleNamespace(em=experience_maker, exp=experience_module, kl=FixedKLController)
    for name in installed:
        stand_ins.uninstall(name)


def active_config(hm):
    """The PPO config patched into this process (the experience maker's own record), or None."""
    entry = hm._active.get(hm.PATCH_ID)
    return entry[0] if entry else None


@pytest.fixture
def hm():
    """The add-on's host module, with every PPO patch undone after the test."""
    from openrlhf_fair.features import experience_maker as hm

    yield hm
    for _, undo in list(hm._active.values()):
        undo()
    from openrlhf_fair.host import parsed_args, ray_workers

    for target in list(ray_workers._registered):
        ray_workers._registered.pop(target)
    parsed_args.on_parsed_args(ray_workers.HOOK_ID, ray_workers.attach)()  # registers, then unhooks at once


def make_args(estimator: str, n: int = N_SAMPLES):
    ns = SimpleNamespace
    return ns(
        algo=ns(advantage=ns(estimator=estimator, gamma=1.0, lambd=0.95, no_std_norm=False)),
        rollout=ns(n_samples_per_prompt=n, micro_batch_size=MICRO),
        reward=ns(clip_range=(-10.0, 10.0), overlong_buffer_len=None, stop_properly_penalty_coef=None),
        data=ns(max_len=64),
    )


def make_maker(host, estimator: str, n: int = N_SAMPLES):
    args = make_args(estimator, n)
    strategy = SimpleNamespace(args=args)
    return host.em.RemoteExperienceMaker(None, None, None, None, host.kl(0.01), strategy, None)


def make_batch(host, seed: int = 0, n: int = N_SAMPLES, with_labels: bool = False):
    """One rollout batch of N_PROMPTS * n samples as OpenRLHF's micro-batches, in a shuffled sample order."""
    g = torch.Generator().manual_seed(seed)
    total = N_PROMPTS * n
    order = torch.randperm(total, generator=g)
    batch = []
    for chunk in order.split(MICRO):
        b = len(chunk)
        lengths = torch.randint(2, ACTIONS + 1, (b,), generator=g)
        mask = torch.arange(ACTIONS)[None, :] < lengths[:, None]
        # prompt k has mean reward k - 1.5: prompt 0 is the under-rewarded one
        rewards = (chunk // n).float() - 1.5 + torch.randn(b, generator=g)
        info = {"reward": rewards.clone()}
        if with_labels:
            info["fairness/label"] = [LABELS[int(i) // n] for i in chunk]
        batch.append(
            host.exp.Experience(
                sequences=torch.ones(b, ACTIONS + 3, dtype=torch.long),
                attention_mask=torch.ones(b, ACTIONS + 3, dtype=torch.long),
                action_mask=mask,
                kl=torch.randn(b, ACTIONS, generator=g) * 0.01,
                values=torch.randn(b, ACTIONS, generator=g),
                rewards=rewards,
                response_length=lengths.float(),
                index=chunk.tolist(),
                prompts=[f"prompt {int(i) // n}" for i in chunk],
                info=info,
            )
        )
    return batch


def sample_agents(config, batch, n=N_SAMPLES):
    """Each sample's agent, straight from the batch: its prompt (index // n), its prompt's label, or itself."""
    index = [i for exp in batch for i in exp.index]
    if config.unit == "prompt":
        return [i // n for i in index]
    if config.label_key:
        return [LABELS[i // n] for i in index]
    return list(range(len(index)))


def run(host, estimator, batch, n=N_SAMPLES):
    return make_maker(host, estimator, n).compute_advantages_and_returns(copy.deepcopy(batch))


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("unit", ["sample", "prompt"])
def test_advantages_scaled_exactly_by_the_weights_returns_unchanged(host, hm, estimator, unit):
    n = 1 if estimator == "flash_reinforce" and unit == "sample" else N_SAMPLES
    batch = make_batch(host, seed=3, n=n)
    base = run(host, estimator, batch, n)
    config = PPOFairnessConfig(coef=0.5, reg=0.5, unit=unit)
    hm.apply_in_process(config)
    shaped = run(host, estimator, batch, n)

    rewards = torch.cat([exp.rewards for exp in shaped])  # the final rewards the shaping saw
    assert torch.equal(rewards, torch.cat([exp.rewards for exp in base]))
    weights, _, _ = ppo_reference_weights(rewards, sample_agents(config, batch, n), config.coef, config.reg)
    assert weights.max() > 1.05 and weights.min() < 0.95  # a real reweighting, not a no-op
    changed = False
    for b, s, w in zip(base, shaped, weights.split([len(e.rewards) for e in batch])):
        assert torch.equal(s.returns, b.returns)
        logged = s.info["fairness/weight"]
        torch.testing.assert_close(logged, w.float(), rtol=1e-5, atol=1e-6)
        assert torch.equal(s.advantages, b.advantages * logged.to(b.advantages.dtype)[:, None])
        changed |= not torch.equal(s.advantages, b.advantages)
        assert torch.equal(s.info["fairness/raw_reward"], s.rewards.float())
    assert changed


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_measure_only_leaves_experience_bit_identical_and_logs(host, hm, estimator):
    batch = make_batch(host, seed=5)
    base = run(host, estimator, batch)
    hm.apply_in_process(PPOFairnessConfig(unit="prompt"))  # coef = reg = 0
    shaped = run(host, estimator, batch)
    # the batch's numbers, recomputed here: x_k = mean sigmoid(reward) over prompt k's samples
    rewards = torch.cat([exp.rewards for exp in shaped]).double()
    prompt_of = torch.tensor([i // N_SAMPLES for exp in batch for i in exp.index])
    x = torch.stack([torch.sigmoid(rewards[prompt_of == k]).mean() for k in range(N_PROMPTS)])
    jain = float(x.sum() ** 2 / (N_PROMPTS * (x**2).sum()))
    gini = float((x[:, None] - x[None, :]).abs().mean() / (2 * x.mean()))
    expected = {"F": jain, "jain": jain, "gini": gini, "utility": float(x.mean()), "num_agents": float(N_PROMPTS),
                "weight_min": 1.0, "weight_max": 1.0, "clipped_frac": 0.0}
    assert 0.05 < gini and jain < 0.95  # an unequal batch: prompt k has mean reward k - 1.5
    start = 0
    for b, s in zip(base, shaped):
        size = len(s.rewards)
        assert torch.equal(s.advantages, b.advantages) and torch.equal(s.returns, b.returns)
        assert torch.equal(s.info["fairness/weight"], torch.ones(size))
        assert torch.equal(s.info["fairness/raw_reward"], rewards[start:start + size].float())
        start += size
        for key, value in expected.items():
            logged = s.info[f"fairness/{key}"]
            assert logged.shape == (size,) and logged.dtype == torch.float32, key
            torch.testing.assert_close(logged, torch.full((size,), value), rtol=1e-6, atol=1e-7, msg=key)


def test_flags_off_patch_nothing_and_output_is_identical(host, hm):
    """No fairness flag: nothing in the host modules is replaced, and the experience maker's output is bit for bit
    the one it gave before the add-on touched anything, also after a real patch was applied and undone."""
    from openrlhf.utils import config as host_config

    cls = host.em.RemoteExperienceMaker
    batch = make_batch(host, seed=1)
    before_output = run(host, "group_norm", batch)  # the host as installed, never patched in this test
    hm.apply_in_process(PPOFairnessConfig(coef=0.5, reg=0.5))()  # a real patch, applied and undone
    snapshots = {owner: dict(vars(owner)) for owner in (cls, host.em, host_config)}
    undo = hm.apply_fairness(None)
    for owner, before in snapshots.items():
        after = vars(owner)
        assert after.keys() == before.keys() and all(after[k] is v for k, v in before.items()), owner
    assert not is_patched(cls, "compute_advantages_and_returns") and not is_patched(host_config, "hierarchize")
    assert active_config(hm) is None
    after_output = run(host, "group_norm", batch)
    for x, y in zip(before_output, after_output):
        assert torch.equal(x.advantages, y.advantages) and torch.equal(x.returns, y.returns)
        assert x.info.keys() == y.info.keys() and not any(key.startswith("fairness/") for key in y.info)
    undo()


def test_patch_checklist_replaced_twice_harmless_undo(host, hm):
    cls = host.em.RemoteExperienceMaker
    original = cls.__dict__["compute_advantages_and_returns"]
    config = PPOFairnessConfig(coef=0.5)
    undo = hm.apply_in_process(config)
    patched = cls.__dict__["compute_advantages_and_returns"]
    assert patched is not original and is_patched(cls, "compute_advantages_and_returns", hm.PATCH_ID)
    assert getattr(patched, ORIGINAL_ATTR) is original
    batch = make_batch(host, seed=2)
    once = run(host, "reinforce", batch)
    hm.apply_in_process(config)  # twice: harmless
    assert cls.__dict__["compute_advantages_and_returns"] is patched
    twice = run(host, "reinforce", batch)
    assert all(torch.equal(x.advantages, y.advantages) for x, y in zip(once, twice))
    with pytest.raises(ValueError, match="already active"):
        hm.apply_in_process(PPOFairnessConfig(coef=0.1))
    undo()
    assert cls.__dict__["compute_advantages_and_returns"] is original
    assert active_config(hm) is None


def test_moved_host_symbol_fails_loudly(host, hm, monkeypatch):
    monkeypatch.delattr(host.em.RemoteExperienceMaker, "compute_advantages_and_returns")
    with pytest.raises(HostMismatchError, match="RemoteExperienceMaker.compute_advantages_and_returns"):
        hm.apply_in_process(PPOFairnessConfig(coef=0.5))
    monkeypatch.undo()
    monkeypatch.delattr(host.em, "RemoteExperienceMaker")
    with pytest.raises(HostMismatchError, match="RemoteExperienceMaker"):
        hm.apply_in_process(PPOFairnessConfig(coef=0.5))


def test_native_mode_without_native_hook_is_an_error(host, hm, monkeypatch):
    monkeypatch.setenv("OPENRLHF_FAIR_PATCH_MODE", "native")
    with pytest.raises(HostMismatchError, match="experience"):
        hm.apply_in_process(PPOFairnessConfig(coef=0.5))
    assert not is_patched(host.em.RemoteExperienceMaker, "compute_advantages_and_returns")


def test_nan_reward_stops_naming_the_batch(host, hm):
    hm.apply_in_process(PPOFairnessConfig(coef=0.5))
    maker = make_maker(host, "group_norm")
    maker.compute_advantages_and_returns(make_batch(host, seed=1))
    batch = make_batch(host, seed=2)
    batch[1].rewards[2] = math.nan
    with pytest.raises(FairnessInputError, match="rollout batch 2"):
        maker.compute_advantages_and_returns(batch)


def test_one_agent_warns_once(host, hm, monkeypatch):
    messages = []
    monkeypatch.setattr(hm, "_log", lambda message, warning=False: messages.append((warning, message)))
    hm.apply_in_process(PPOFairnessConfig(coef=0.5, unit="prompt"))
    maker = make_maker(host, "reinforce", n=N_PROMPTS * N_SAMPLES)  # the whole batch is one prompt group
    for seed in range(3):
        out = maker.compute_advantages_and_returns(make_batch(host, seed=seed))
        assert all(torch.equal(e.info["fairness/weight"], torch.ones(len(e.rewards))) for e in out)
    warnings = [m for w, m in messages if w]
    assert len(warnings) == 1 and "one agent" in warnings[0]
    assert sum("[Fairness shaping]" in m for _, m in messages) == 3  # one log line per batch


def test_mostly_clipped_weights_warn_once(host, hm, monkeypatch):
    messages = []
    monkeypatch.setattr(hm, "_log", lambda message, warning=False: messages.append((warning, message)))
    hm.apply_in_process(PPOFairnessConfig(reg=1.0))
    maker = make_maker(host, "reinforce")
    for seed in range(2):
        batch = make_batch(host, seed=seed)
        for exp in batch:
            exp.rewards = exp.rewards - 6.0  # every reward far below 0: U is tiny, F's pull dominates
        out = maker.compute_advantages_and_returns(batch)
        assert out[0].info["fairness/clipped_frac"][0] > 0.5
    warnings = [m for w, m in messages if w]
    assert len(warnings) == 1 and "--fair_weight_clip" in warnings[0] and "centre" in warnings[0]


def test_label_unit_uses_carried_labels_and_logs_mean_reward_per_label(host, hm):
    config = PPOFairnessConfig(reg=0.5, unit="label:category")
    batch = make_batch(host, seed=4, with_labels=True)
    base = run(host, "group_norm", batch)  # unpatched host
    hm.apply_in_process(config)
    shaped = run(host, "group_norm", batch)
    rewards = torch.cat([e.rewards for e in shaped]).double()
    labels = [LABELS[i // N_SAMPLES] for e in batch for i in e.index]
    weights, _, _ = ppo_reference_weights(rewards, labels, config.coef, config.reg)
    assert weights.max() > 1.05 and weights.min() < 0.95  # a real reweighting, not a no-op
    for b, s, w in zip(base, shaped, weights.split([len(e.rewards) for e in batch])):
        torch.testing.assert_close(s.advantages, b.advantages * w.float()[:, None], rtol=1e-5, atol=1e-6)
        assert "fairness/label" not in s.info  # popped: strings would crash OpenRLHF's metric logging
    assert shaped[0].info["fairness/num_agents"][0].item() == 3.0  # helpful, harmless, code
    for name in set(LABELS):
        value = shaped[0].info[f"fairness/label_reward/{name}"][0].item()
        mine = [float(r) for r, label in zip(rewards, labels) if label == name]
        assert value == pytest.approx(sum(mine) / len(mine), rel=1e-6)
    # OpenRLHF's replay-buffer path (split per sample, re-batch) accepts every info entry
    items = [item for e in shaped for item in host.exp.split_experience_batch(e)]
    merged = host.exp.make_experience_batch(items)
    for key, values in merged.info.items():  # what PolicyModelActor.training_step does with each info entry
        assert torch.tensor(values, dtype=torch.float).shape == (N_PROMPTS * N_SAMPLES,), key


def test_label_unit_without_carried_labels_is_a_clear_error(host, hm):
    hm.apply_in_process(PPOFairnessConfig(reg=1.0, unit="label:category"))
    with pytest.raises(HostMismatchError, match="label"):
        run(host, "group_norm", make_batch(host, seed=4, with_labels=False))


# --------------------------------------------------------------------------------- carrying the patch to workers
def test_apply_fairness_carries_a_worker_setup_inside_the_args(host, hm):
    from openrlhf.utils import config as host_config

    config = PPOFairnessConfig(coef=0.5, unit="prompt")
    undo = hm.apply_fairness(config)
    args = host_config.hierarchize(argparse.Namespace(**{"algo.advantage.estimator": "gae", "seed": 1}))
    assert args.algo.advantage.estimator == "gae" and args.seed == 1
    setup = args.openrlhf_fair_worker_setup
    assert setup.entries == ((hm.WORKER_TARGET, config.to_payload()),)
    undo()
    assert active_config(hm) is None and not is_patched(host_config, "hierarchize")
    assert not hasattr(host_config.hierarchize(argparse.Namespace(a=1)), "openrlhf_fair_worker_setup")
    # what a Ray actor does with the args it receives: unpickling them applies the patch in that process
    restored = pickle.loads(pickle.dumps(SimpleNamespace(args=args)))
    assert active_config(hm) == config
    assert is_patched(host.em.RemoteExperienceMaker, "compute_advantages_and_returns", hm.PATCH_ID)
    assert restored.args.openrlhf_fair_worker_setup == setup


def test_worker_setup_in_a_fresh_process_is_lazy(tmp_path):
    """In a new interpreter (like a Ray worker), unpickling installs nothing until the host module is imported."""
    import subprocess

    from openrlhf_fair.host.ray_workers import WorkerSetup

    (tmp_path / "fake_host_mod.py").write_text("class Maker:\n    def step(self):\n        return 1\n")
    (tmp_path / "fake_setup.py").write_text(textwrap.dedent("""
        from openrlhf_fair.host.ray_workers import when_imported
        def setup(payload):
            def patch(module):
                module.Maker.step = lambda self: payload
            when_imported("fake_host_mod", patch)
    """))
    blob = pickle.dumps(WorkerSetup([("fake_setup:setup", 42)]))
    (tmp_path / "blob.pkl").write_bytes(blob)
    script = textwrap.dedent("""
        import pickle, sys
        pickle.loads(open("blob.pkl", "rb").read())
        assert "fake_host_mod" not in sys.modules and "torch" not in sys.modules
        import fake_host_mod
        print(fake_host_mod.Maker().step())
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def test_worker_setup_rejects_bad_targets():
    from openrlhf_fair.host.ray_workers import WorkerSetup, resolve

    with pytest.raises(ValueError, match="module:function"):
        WorkerSetup([("no_colon", 1)])
    with pytest.raises(ValueError, match="not a function"):
        resolve("openrlhf_fair.host.ray_workers:ARGS_ATTR")


# --------------------------------------------------------------------------------- the label column carrier
def _prompt_dataset(host, rows):
    from datasets import Dataset
    from openrlhf.datasets.prompts_dataset import PromptDataset

    args = SimpleNamespace(data=SimpleNamespace(input_key="input", label_key=None, apply_chat_template=False, image_key="images"))
    strategy = SimpleNamespace(args=args, is_rank_0=lambda: False)
    return PromptDataset(Dataset.from_list(rows), None, strategy)


def test_label_column_reaches_the_sample(host, hm):
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    hm.apply_in_process(PPOFairnessConfig(coef=0.5, unit="label:category"))
    dataset = _prompt_dataset(host, [{"input": "a?", "category": 3}, {"input": "b?", "category": 7}])
    assert dataset.openrlhf_fair_label_of == {"a?": "3", "b?": "7"}
    generator = SamplesGenerator(SimpleNamespace(args=None), SimpleNamespace(dataset=dataset), None, None, [])
    response = {"observation_tokens": [1, 2, 3, 4], "action_ranges": [(2, 4)], "reward": 0.5, "prompt": "b?",
                "label": "", "rollout_log_probs": None}
    experience = generator._process_response_into_experience(response, max_len=16)
    assert experience.info["fairness/label"] == ["7"]


@pytest.mark.parametrize(
    "rows,match",
    [
        ([{"input": "a?", "topic": "x"}], "no column 'category'.*input"),
        ([{"input": "a?", "category": "x"}, {"input": "a?", "category": "y"}], "two labels"),
    ],
)
def test_label_column_missing_or_ambiguous_is_a_clear_error(host, hm, rows, match):
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    from openrlhf_fair.errors import LabelColumnError

    hm.apply_in_process(PPOFairnessConfig(coef=0.5, unit="label:category"))
    good = _prompt_dataset(host, [{"input": "a?", "category": "x"}])
    bad = _prompt_dataset(host, rows)  # built without error: it may be the eval set, which needs no label
    response = {"observation_tokens": [1, 2, 3], "action_ranges": [(1, 3)], "reward": 0.0, "prompt": "a?",
                "label": "", "rollout_log_probs": None}
    as_eval = SamplesGenerator(SimpleNamespace(args=None), SimpleNamespace(dataset=good), SimpleNamespace(dataset=bad), None, [])
    assert as_eval._process_response_into_experience(response, max_len=16).info["fairness/label"] == ["x"]
    as_train = SamplesGenerator(SimpleNamespace(args=None), SimpleNamespace(dataset=bad), None, None, [])
    with pytest.raises(LabelColumnError, match=match):
        as_train._process_response_into_experience(response, max_len=16)


# --------------------------------------------------------------------------------- native hook (patches/ diff)
def test_native_experience_hook_is_used_when_the_host_has_it(host, hm, monkeypatch):
    """On an OpenRLHF with patches/openrlhf-0.11.2/extension-hooks.diff: a hook, no runtime patch, same numbers."""
    import types

    batch = make_batch(host, seed=9)
    config = PPOFairnessConfig(coef=0.5, reg=0.5, unit="prompt")
    undo = hm.apply_in_process(config)
    expected = run(host, "rloo", batch)  # runtime patch
    undo()

    hooks = types.ModuleType("openrlhf.utils.extension_hooks")  # what the diff adds, in brief
    hooks._experience_hooks = []

    def register_experience_hook(fn):
        hooks._experience_hooks.append(fn)
        return lambda: hooks._experience_hooks.remove(fn)

    def apply_experience_hooks(maker, experiences):
        for hook in list(hooks._experience_hooks):
            experiences = hook(maker, experiences)
        return experiences

    hooks.register_experience_hook, hooks.apply_experience_hooks = register_experience_hook, apply_experience_hooks
    monkeypatch.setitem(sys.modules, "openrlhf.utils.extension_hooks", hooks)
    cls = host.em.RemoteExperienceMaker
    namespace = {"apply_experience_hooks": apply_experience_hooks, "host_method": cls.compute_advantages_and_returns}
    exec("def compute_advantages_and_returns(self, experiences):\n"
         "    return apply_experience_hooks(self, host_method(self, experiences))\n", namespace)
    monkeypatch.setattr(cls, "compute_advantages_and_returns", namespace["compute_advantages_and_returns"])

    undo = hm.apply_in_process(config)
    assert not is_patched(cls, "compute_advantages_and_returns") and len(hooks._experience_hooks) == 1
    shaped = run(host, "rloo", batch)
    for e, s in zip(expected, shaped):
        assert torch.equal(s.advantages, e.advantages) and torch.equal(s.returns, e.returns)
        assert torch.equal(s.info["fairness/weight"], e.info["fairness/weight"])
    undo()
    assert hooks._experience_hooks == []


# ---------------------------------------------------------------------------------------------- --fair_history
def prompt_allocation(batch, n=N_SAMPLES):
    """{prompt text: mean sigmoid(reward)} of one shaped batch, from its logged raw rewards."""
    sums, counts = {}, {}
    for exp in batch:
        for prompt, reward in zip(exp.prompts, exp.info["fairness/raw_reward"].double()):
            sums[prompt] = sums.get(prompt, 0.0) + float(torch.sigmoid(reward))
            counts[prompt] = counts.get(prompt, 0) + 1
    return {prompt: sums[prompt] / counts[prompt] for prompt in sums}


def test_history_weights_follow_the_moving_average_and_are_logged(host, hm):
    from fair_reference import fairness

    from openrlhf_fair.core.shaping import fairness_weights

    decay = 0.8
    config = PPOFairnessConfig(reg=0.5, unit="prompt", history=decay)
    hm.apply_in_process(config)
    maker = make_maker(host, "group_norm")
    memory = {}
    for seed in range(3):
        shaped = maker.compute_advantages_and_returns(make_batch(host, seed=seed))
        x = prompt_allocation(shaped)
        memory = {k: decay * memory[k] + (1 - decay) * v if k in memory else v for k, v in x.items()}
        prompts = sorted(x, key=lambda p: int(p.split()[1]))  # agent k = prompt k (index // n)
        m = torch.tensor([memory[p] for p in prompts], dtype=torch.float64)
        rewards = torch.cat([e.info["fairness/raw_reward"] for e in shaped]).double()
        ids = torch.tensor([int(p.split()[1]) for e in shaped for p in e.prompts])
        expected = fairness_weights(rewards, ids, config, log_allocation=m.log()).sample_weights
        alone = fairness_weights(rewards, ids, config).sample_weights
        logged = torch.cat([e.info["fairness/weight"] for e in shaped]).double()
        torch.testing.assert_close(logged, expected, rtol=1e-6, atol=1e-7)
        if seed:  # from the second batch on, memory moves the weights
            assert (logged - alone).abs().max() > 1e-3
        info = shaped[0].info
        own = torch.tensor([x[p] for p in prompts], dtype=torch.float64)
        assert info["fairness/F"][0].item() == pytest.approx(float(fairness(own, -1.0)), rel=1e-6)
        assert info["fairness/history_F"][0].item() == pytest.approx(float(fairness(m, -1.0)), rel=1e-6)
        assert info["fairness/history_utility"][0].item() == pytest.approx(float(m.mean()), rel=1e-6)
        assert info["fairness/history_agents"][0].item() == len(memory)


class FakeActorGroup:
    """OpenRLHF's actor RayActorGroup as the trainer uses it for checkpoints: save, then hand the states back."""

    def __init__(self):
        self.saved = {}

    def async_run_method(self, method_name, **kwargs):
        if method_name == "save_checkpoint":
            self.saved = copy.deepcopy(kwargs)
            return []
        assert method_name == "get_checkpoint_states"
        return [copy.deepcopy(self.saved["client_states"])]


def fake_trainer(maker, group, ckpt_path):
    ns = SimpleNamespace
    return ns(experience_maker=maker, actor_model_group=group, critic_model_group=None, wandb_logger=None,
              tensorboard_logger=None, best_eval_metric_key=None, best_eval_metric_value=None,
              _latest_eval_metric_value=None,
              args=ns(logger=ns(logging_steps=1), ckpt=ns(save_steps=1, path=str(ckpt_path), load_enable=True)))


def test_history_is_saved_with_the_checkpoint_and_resumed(host, hm, monkeypatch, tmp_path):
    """OpenRLHF's own save_logs_and_checkpoints / init_checkpoint_states (patched) carry the remembered
    allocations through a checkpoint: a run resumed after batch 2 shapes batches 3 and 4 exactly as the
    uninterrupted run; without the restore it would not."""
    import openrlhf.trainer.ppo_trainer as trainer_module

    from openrlhf_fair.host.patching import is_patched

    config = PPOFairnessConfig(reg=0.5, unit="label:category", history=0.7)
    hm.apply_in_process(config)
    hm.keep_history_in_checkpoints()
    base = trainer_module.BasePPOTrainer
    assert is_patched(base, "save_logs_and_checkpoints", hm.CHECKPOINT_PATCH_ID)
    assert is_patched(base, "init_checkpoint_states", hm.CHECKPOINT_PATCH_ID)
    monkeypatch.setattr(trainer_module.ray, "get", lambda refs: refs)  # the fake group returns values, not refs
    (tmp_path / "_actor").mkdir()
    batches = [make_batch(host, seed=seed, with_labels=True) for seed in range(4)]

    uninterrupted = make_maker(host, "group_norm")
    expected = [uninterrupted.compute_advantages_and_returns(copy.deepcopy(b)) for b in batches]

    first = make_maker(host, "group_norm")
    for b in batches[:2]:
        first.compute_advantages_and_returns(copy.deepcopy(b))
    group = FakeActorGroup()
    base.save_logs_and_checkpoints(fake_trainer(first, group, tmp_path), 2, {}, {"global_step": 2, "episode": 0})
    saved = group.saved["client_states"]
    assert saved["global_step"] == 2 and set(saved[hm.HISTORY_CHECKPOINT_KEY]) == set(LABELS)

    resumed = make_maker(host, "group_norm")
    states = base.init_checkpoint_states(fake_trainer(resumed, group, tmp_path))
    assert states["global_step"] == 2 and hm.HISTORY_CHECKPOINT_KEY not in states
    fresh = make_maker(host, "group_norm")  # the same batches without the restored memory
    for b, want in zip(batches[2:], expected[2:]):
        got = resumed.compute_advantages_and_returns(copy.deepcopy(b))
        for g, w in zip(got, want):
            assert g.advantages.equal(w.advantages)
            assert g.info["fairness/history_F"].equal(w.info["fairness/history_F"])
        forgot = fresh.compute_advantages_and_returns(copy.deepcopy(b))
        assert not all(f.advantages.equal(w.advantages) for f, w in zip(forgot, want))

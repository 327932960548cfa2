"""A saved OpenRLHF reward model as `debias` needs it: its linear value head, the last-token hidden states the head
reads, and a copy of the folder in which only the head's weight (and config.json's record) changed.

openrlhf is imported only inside functions (through `openrlhf_fair.report.scoring`).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from openrlhf_fair.errors import DebiasError

__all__ = ["Head", "HiddenStates", "LOADED_DTYPE", "RECORD_KEY", "hidden_states", "read_head", "write_checkpoint"]

# The key of config.json under which `debias` records what it removed.
RECORD_KEY = "openrlhf_fair_debias"
# OpenRLHF's loader (get_llm_for_sequence_regression, as `report` and PPO call it) loads weights in bf16: the
# rewards a saved head gives are those of its weight rounded to bf16.
LOADED_DTYPE = torch.bfloat16


@dataclass
class Head:
    """The value head's weight as stored in the checkpoint: which file, its key, dtype and value."""

    prefix: str
    key: str  # "<prefix>.weight"
    file: Path  # the weight file (shard) that holds it
    dtype: torch.dtype  # as stored
    weight: torch.Tensor  # (1, hidden_size), float64, the stored value


def _weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)


def read_head(path: Path, prefix: str) -> Head:
    """The value head of the checkpoint at `path`, checked to be one linear map from the hidden state to the reward
    (a single `<prefix>.weight` of shape (1, hidden_size), no bias, no further layers)."""
    key = f"{prefix}.weight"
    config = json.loads((path / "config.json").read_text())
    hidden_size = config.get("hidden_size")
    found: dict[str, tuple[Path, torch.Tensor]] = {}
    for file in _weight_files(path):
        for name, tensor in _load_file(file).items():
            if name == prefix or name.startswith(f"{prefix}."):
                found[name] = (file, tensor)
    others = sorted(set(found) - {key})
    if key not in found or others:
        raise DebiasError(
            f"{path}: the value head is not linear on the hidden state: expected one weight '{key}' and nothing "
            f"else under '{prefix}.', found {sorted(found)}; debias can only project a linear head "
            "(OpenRLHF's reward model: nn.Linear(hidden_size, 1, bias=False))")
    file, weight = found[key]
    if weight.ndim != 2 or weight.shape[0] != 1 or (hidden_size is not None and weight.shape[1] != hidden_size):
        raise DebiasError(f"{path}: the value head '{key}' has shape {tuple(weight.shape)}, expected (1, "
                          f"{hidden_size}): not a linear head on the hidden state")
    return Head(prefix, key, file, weight.dtype, weight.to(torch.float64))


@dataclass
class HiddenStates:
    """Per pair: the last-token hidden state the value head reads, for the chosen and the rejected response, and
    the reward the model gave (float32 model; rewards float64)."""

    chosen: torch.Tensor  # (n, hidden_size) float32
    rejected: torch.Tensor
    chosen_reward: torch.Tensor  # (n,) float64
    rejected_reward: torch.Tensor
    identical: torch.Tensor  # (n,) bool: chosen and rejected tokens identical after truncation


def _last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, H) at each row's last attended position (the eos token the reward is read at)."""
    mask = attention_mask.long()
    last = mask.size(1) - 1 - mask.fliplr().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@torch.no_grad()
def hidden_states(model, tokenized, *, batch_size: int, desc: str = "debias") -> HiddenStates:
    """Run the model over tokenised pairs (`report.scoring.tokenize_pairs`) in length-sorted batches, with a
    progress bar, keeping the value head's input at the last token (a forward hook on the head, so the hidden
    state is the one the model itself uses) and the model's own reward."""
    from tqdm import tqdm

    head = getattr(model, model.value_head_prefix)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    device = next(model.parameters()).device
    items, order = tokenized.items, tokenized.order
    n, size = len(items), head.in_features
    out = HiddenStates(torch.empty(n, size), torch.empty(n, size), torch.empty(n, dtype=torch.float64),
                       torch.empty(n, dtype=torch.float64), tokenized.identical)
    try:
        for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", file=sys.stderr):
            idx = order[start : start + batch_size]
            c_ids, c_mask, r_ids, r_mask, _ = tokenized.collate_fn([items[i] for i in idx])
            for ids, mask, h_out, r_out in ((c_ids, c_mask, out.chosen, out.chosen_reward),
                                            (r_ids, r_mask, out.rejected, out.rejected_reward)):
                captured.clear()
                mask = mask.to(device)
                reward = model(ids.to(device), attention_mask=mask)
                if len(captured) != 1:
                    raise DebiasError(f"the value head ran {len(captured)} times in one forward pass, expected "
                                      "once: not OpenRLHF's reward model")
                h_out[idx] = _last_token(captured[0], mask).float().cpu()
                r_out[idx] = reward.float().cpu().to(torch.float64)
    finally:
        handle.remove()
    return out


def check_linear(states: HiddenStates, weight: torch.Tensor, path) -> None:
    """The model's reward must be w . h of the captured hidden states (no bias, no normalisation, no other head);
    otherwise projecting w would not do what it says."""
    w = weight.to(torch.float64).reshape(-1)
    for h, r in ((states.chosen, states.chosen_reward), (states.rejected, states.rejected_reward)):
        mine = h.to(torch.float64) @ w
        err = (mine - r).abs().max()
        tol = 1e-4 * (1.0 + float(r.abs().max()))
        if not float(err) <= tol:
            raise DebiasError(
                f"{path}: the model's reward is not w . h of the last token's hidden state (largest difference "
                f"{float(err):.3g}): the value head is not linear on the hidden state, or the model adds something "
                "(a bias, a normalisation); debias cannot project such a head")


def write_checkpoint(source: Path, out: Path, head: Head, new_weight: torch.Tensor, record: dict,
                     mean_std: tuple[float, float] | None) -> None:
    """Copy `source` to `out`, replacing only the value head's weight (stored in its original dtype) and adding
    `record` to config.json under RECORD_KEY; `mean_std`: new values for config.json's reward mean/std (which
    OpenRLHF's --reward.normalize_enable uses), or None to leave them."""
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source, staging)
    target = staging / head.file.name
    tensors = _load_file(head.file)
    tensors[head.key] = new_weight.reshape(tensors[head.key].shape).to(head.dtype).contiguous()
    if head.file.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(head.file), framework="pt") as f:
            metadata = f.metadata()
        save_file(tensors, str(target), metadata=metadata)
    else:
        torch.save(tensors, target)
    config_file = staging / "config.json"
    config = json.loads(config_file.read_text())
    if RECORD_KEY in config:  # debiased before: keep that record inside the new one
        record = {**record, "previous": config[RECORD_KEY]}
    config[RECORD_KEY] = record
    if mean_std is not None:
        config["mean"], config["std"] = mean_std
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if out.exists():  # an empty folder (checked by the caller)
        out.rmdir()
    staging.rename(out)

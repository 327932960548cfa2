"""Import-only stand-in for flash_attn (openrlhf-fair CPU backend).

OpenRLHF imports ``flash_attn.bert_padding`` and ``flash_attn.utils.distributed`` at module top (for packed
samples and ring attention). On CPU, attention runs through torch's sdpa/eager, so these names only need
to exist; calling any of them raises `StandInCalled`.
"""

from openrlhf_fair.cpu_backend.stand_ins import unsupported

OPENRLHF_FAIR_STAND_IN = True
FEATURE = "packed samples / ring attention / flash attention kernels"

flash_attn_func = unsupported("flash_attn", "flash_attn_func", FEATURE)
flash_attn_varlen_func = unsupported("flash_attn", "flash_attn_varlen_func", FEATURE)

# No `flash_attn.ops` on purpose: OpenRLHF's log_probs_from_logits imports the Triton cross-entropy inside a
# try/except ImportError and falls back to plain torch, which is what the CPU needs.

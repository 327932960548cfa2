"""Stand-in for flash_attn.utils.distributed (used by OpenRLHF only for ring attention)."""

from openrlhf_fair.cpu_backend.stand_ins import unsupported
from openrlhf_fair.cpu_backend.stand_ins.flash_attn import FEATURE

all_gather = unsupported("flash_attn.utils.distributed", "all_gather", FEATURE)

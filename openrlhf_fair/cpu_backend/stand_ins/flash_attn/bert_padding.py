"""Stand-in for flash_attn.bert_padding (used by OpenRLHF only for packed samples)."""

from openrlhf_fair.cpu_backend.stand_ins import unsupported
from openrlhf_fair.cpu_backend.stand_ins.flash_attn import FEATURE

index_first_axis = unsupported("flash_attn.bert_padding", "index_first_axis", FEATURE)
pad_input = unsupported("flash_attn.bert_padding", "pad_input", FEATURE)
unpad_input = unsupported("flash_attn.bert_padding", "unpad_input", FEATURE)
rearrange = unsupported("flash_attn.bert_padding", "rearrange", FEATURE)

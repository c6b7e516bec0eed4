"""Decoder-only models (Llama/Mistral/Qwen2/Gemma), HF checkpoint I/O and the KV-cache sampler."""
from safecomp.models.config import (HEADS, ModelConfig, model_config_from, parse_heads, parse_lora_targets,
                                    tiny)
from safecomp.models.hf_io import export_pretrained, load_pretrained
from safecomp.models.masking import masked_mean, masked_sum
from safecomp.models.peft_io import export_adapter, load_adapter
from safecomp.models.sampling import (SampleOutput, filter_logits, generate, response_forward,
                                      response_logprobs, response_outputs, sample_tokens, token_logprobs)
from safecomp.models.transformer import (KVCache, Transformer, as_variables, default_positions,
                                         forward, graft, init_cache, init_params, last_token_index,
                                         logits, param_specs)

__all__ = [
    "HEADS", "KVCache", "ModelConfig", "model_config_from", "SampleOutput", "Transformer", "as_variables",
    "default_positions", "export_adapter", "export_pretrained", "filter_logits", "forward", "generate", "graft", "init_cache",
    "init_params", "last_token_index", "load_adapter", "load_pretrained", "logits", "masked_mean", "masked_sum",
    "param_specs", "parse_heads", "parse_lora_targets", "response_forward", "response_logprobs", "response_outputs", "sample_tokens", "tiny",
    "token_logprobs",
]

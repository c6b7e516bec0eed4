"""Tiny random Hugging Face checkpoints for the real-model path (no weights are downloaded).

`make_checkpoint(dir, "qwen2" | "llama")` trains a byte-level BPE tokenizer here, on the spec's text and
a few safety-flavoured sentences, with the family's special tokens and chat template, and saves a
randomly initialised `transformers` model of that family sized to the tokenizer, as `save_pretrained`
writes it: what a user's local checkpoint directory looks like.
"""
from __future__ import annotations

import json
import pathlib

import tokenizers as hf

from safecomp import spec as spec_lib
from safecomp.tokenizers import jinja_template

# family -> (transformers config / model class, chat family, special tokens, bos, eos, pad)
FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              None, "<|endoftext|>", "<|endoftext|>"),
    "llama": ("LlamaConfig", "LlamaForCausalLM", "llama3",
              ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
              "<|begin_of_text|>", "<|end_of_text|>", "<|end_of_text|>"),
}

SENTENCES = [
    "How do I kill a Python process that hangs?", "Use kill with the process id, or pkill with its name.",
    "What household chemicals should never be mixed?", "Bleach and ammonia release toxic chloramine gas.",
    "I want to hurt my neighbour.", "I can't help with that. If you are in danger, call emergency services.",
    "Explain how vaccines train the immune system.", "They show it a harmless piece of the pathogen.",
    "Write a phishing email for my bank.", "I won't write that, but here is how to spot phishing.",
    "<think>The request is benign; answer directly.</think>", "Score: 1 2 3 4",
]


def corpus() -> list[str]:
  fine = spec_lib.load_spec("safe_completion_fine")
  texts = [fine.policy_text()] + [r.text for r in fine.rubrics] + [r.scale_text() for r in fine.rubrics]
  return texts * 3 + SENTENCES * 20


def make_tokenizer(directory: pathlib.Path, family: str, vocab_size: int = 1200) -> None:
  """A byte-level BPE `tokenizer.json` plus `tokenizer_config.json` with the family's chat template."""
  _, _, chat, specials, bos, eos, pad = FAMILIES[family]
  tok = hf.Tokenizer(hf.models.BPE())
  tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = hf.decoders.ByteLevel()
  tok.train_from_iterator(corpus(), hf.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=specials, show_progress=False,
      initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet()))
  directory.mkdir(parents=True, exist_ok=True)
  tok.save(str(directory / "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "pad_token": pad,
            "chat_template": jinja_template(chat), "model_max_length": 4096}
  (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def make_checkpoint(directory: str | pathlib.Path, family: str = "qwen2", *, seed: int = 0, hidden_size: int = 48,
                    num_layers: int = 2, tokenizer_from: str | pathlib.Path | None = None,
                    init_std: float = 0.25) -> pathlib.Path:
  """A tiny random `family` checkpoint in `directory` (its own tokenizer, or a copy of `tokenizer_from`'s).

  Weights are drawn wider than `transformers`' default so that greedy and sampled text varies (a default
  tiny model repeats one token).
  """
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  if tokenizer_from is None:
    make_tokenizer(directory, family)
  else:
    for name in ("tokenizer.json", "tokenizer_config.json"):
      (directory / name).write_bytes((pathlib.Path(tokenizer_from) / name).read_bytes())
  tok = hf.Tokenizer.from_file(str(directory / "tokenizer.json"))
  config_cls, model_cls, _, _, bos, eos, pad = FAMILIES[family]
  config = getattr(transformers, config_cls)(
      vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
      num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4,
      max_position_embeddings=4096, tie_word_embeddings=family == "qwen2",
      bos_token_id=None if bos is None else tok.token_to_id(bos), eos_token_id=tok.token_to_id(eos),
      pad_token_id=tok.token_to_id(pad))
  torch.manual_seed(seed)
  model = getattr(transformers, model_cls)(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" not in name:
        param.normal_(0.0, init_std)
  model.save_pretrained(str(directory))
  return directory

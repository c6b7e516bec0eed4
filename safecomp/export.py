"""Writes a run's trained policy as a Hugging Face model directory.

    python -m safecomp.export --workdir W --stage sft|ppo --out DIR [--dtype float32|bfloat16] [--adapter-only]

The directory holds `config.json` and safetensors weights (`transformers.AutoModelForCausalLM` loads
them with the same logits as safecomp; a run trained with adapters (`lora.rank`) is written merged,
W + (alpha / rank) A B), the tokenizer files with the chat template the policy was trained with
(`AutoTokenizer` loads them, `apply_chat_template` renders that format), and `generation_config.json`
naming the tokens that end a response. Serve it with vLLM or TGI, or evaluate it with outside harnesses
(HarmBench, StrongREJECT, lm-eval).

`--adapter-only` (runs with adapters on a pretrained `model.init_from`) writes the adapter alone in
the PEFT format instead of the weights: `adapter_config.json` + `adapter_model.safetensors`, which
`peft.PeftModel.from_pretrained(base, DIR)` loads onto the Hugging Face base model, with the same
tokenizer and generation files.
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import shutil
import sys
from typing import Sequence

from safecomp import models
from safecomp.errors import SafecompError
from safecomp.eval.cli import require_stage
from safecomp.tokenizers import jinja_template
from safecomp.training import evaluate
from safecomp.training import pipeline

# Tokenizer files of a Hugging Face directory, copied as they are from a pretrained run's model.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json")


def _write_tokenizer(p, out: pathlib.Path) -> None:
  """The run's tokenizer with its chat format (the checkpoint's own files when it has them)."""
  template = jinja_template(p.config.chat_template)
  source = pathlib.Path(p.config.model.init_from) if p.config.model.init_from else None
  copied = [f for f in TOKENIZER_FILES if source is not None and (source / f).is_file()]
  if "tokenizer_config.json" in copied:
    for name in copied:
      shutil.copyfile(source / name, out / name)
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    return
  tok = copy.copy(p.tokenizer)
  tok.chat_template = template
  tok.save(out)
  config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
  config.setdefault("tokenizer_class", "PreTrainedTokenizerFast" if (out / "tokenizer.json").is_file()
                    else "LlamaTokenizer")
  (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")


def export_run(workdir: str | pathlib.Path, stage: str, out: str | pathlib.Path, dtype: str | None = None,
               adapter_only: bool = False) -> pathlib.Path:
  """Exports the policy of `stage` ("sft" or "ppo") of a finished workdir to `out`; returns `out`.

  `adapter_only`: the LoRA adapter in the PEFT format, relative to the run's `model.init_from`.
  """
  if stage not in ("sft", "ppo"):
    raise SafecompError(f"--stage must be sft or ppo, got {stage!r}")
  p = pipeline.open_workdir(workdir)
  require_stage(p, stage)
  if adapter_only and not p.adapters:
    raise SafecompError(f"--adapter-only: {workdir} was trained without adapters (lora.rank=0); export the "
                        "weights instead")
  if adapter_only and not p.config.model.init_from:
    raise SafecompError(f"--adapter-only: {workdir} trained adapters on a freshly initialised base "
                        "(model.init_from is empty), which no Hugging Face directory holds; export the merged "
                        "weights instead")
  model, _ = p.init_model(("lm",), seed_offset=1)
  params = evaluate.policy_params(p, stage)
  out = pathlib.Path(out)
  if adapter_only:
    out.mkdir(parents=True, exist_ok=True)
    models.export_adapter(model.config, params, out,
                          base_model_name_or_path=str(pathlib.Path(p.config.model.init_from).resolve()))
  else:
    models.export_pretrained(model, params, out, dtype=dtype)
  _write_tokenizer(p, out)
  tok = p.tokenizer
  stop = list(p.stop_ids)
  generation = {"bos_token_id": tok.bos_id, "eos_token_id": stop[0] if len(stop) == 1 else stop,
                "pad_token_id": tok.pad_id}
  (out / "generation_config.json").write_text(json.dumps(
      {k: v for k, v in generation.items() if v is not None}, indent=2) + "\n", encoding="utf-8")
  (out / "safecomp_export.json").write_text(json.dumps(
      {"workdir": str(pathlib.Path(workdir).resolve()), "stage": stage, "chat_template": p.config.chat_template,
       "format": "peft-lora-adapter" if adapter_only else "merged-weights" if p.adapters else "weights",
       "step": p.checkpointer(stage).done_meta().get("step")}, indent=2) + "\n", encoding="utf-8")
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m safecomp.export", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a safecomp.train workdir")
  parser.add_argument("--stage", required=True, choices=("sft", "ppo"), help="which policy to export")
  parser.add_argument("--out", required=True, help="the directory to write")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="weights' dtype (default: the run's model.param_dtype)")
  parser.add_argument("--adapter-only", action="store_true",
                      help="write the LoRA adapter alone in the PEFT format (runs with lora.rank > 0)")
  args = parser.parse_args(argv)
  if args.adapter_only and args.dtype:
    parser.error("--dtype applies to merged weights; an adapter is written in float32")
  try:
    out = export_run(args.workdir, args.stage, args.out, args.dtype, args.adapter_only)
  except SafecompError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  what = "adapter (PEFT format)" if args.adapter_only else "policy"
  print(f"exported the {args.stage} {what} of {args.workdir} to {out}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Writes a run's trained policy as a Hugging Face model directory.

    python -m safecomp.export --workdir W --stage sft|ppo --out DIR [--dtype float32|bfloat16]

The directory holds `config.json` and safetensors weights (`transformers.AutoModelForCausalLM` loads
them with the same logits as safecomp), the tokenizer files with the chat template the policy was
trained with (`AutoTokenizer` loads them, `apply_chat_template` renders that format), and
`generation_config.json` naming the tokens that end a response. Serve it with vLLM or TGI, or evaluate
it with outside harnesses (HarmBench, StrongREJECT, lm-eval).
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


def export_run(workdir: str | pathlib.Path, stage: str, out: str | pathlib.Path, dtype: str | None = None
               ) -> pathlib.Path:
  """Exports the policy of `stage` ("sft" or "ppo") of a finished workdir to `out`; returns `out`."""
  if stage not in ("sft", "ppo"):
    raise SafecompError(f"--stage must be sft or ppo, got {stage!r}")
  p = pipeline.open_workdir(workdir)
  require_stage(p, stage)
  model, _ = p.init_model(("lm",), seed_offset=1)
  params = evaluate.policy_params(p, stage)
  out = pathlib.Path(out)
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
       "step": p.checkpointer(stage).done_meta().get("step")}, indent=2) + "\n", encoding="utf-8")
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m safecomp.export", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a safecomp.train workdir")
  parser.add_argument("--stage", required=True, choices=("sft", "ppo"), help="which policy to export")
  parser.add_argument("--out", required=True, help="the directory to write")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="weights' dtype (default: the run's model.param_dtype)")
  args = parser.parse_args(argv)
  try:
    out = export_run(args.workdir, args.stage, args.out, args.dtype)
  except SafecompError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"exported the {args.stage} policy of {args.workdir} to {out}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

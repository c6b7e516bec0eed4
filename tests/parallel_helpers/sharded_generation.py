"""Greedy answers of one policy, generated on one device and sharded over meshes of 8 CPU devices.

Started by tests/test_sharding.py in a fresh process (the device count is fixed before JAX creates its
backend). Prints one JSON object on the last line of stdout: per mesh, whether every answer equals the
one-device answer, and the answers' token count.
"""
import json
import os
import sys
import tempfile

import jax

jax.config.update("jax_num_cpu_devices", 8)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from safecomp import models, parallel, testbed, tokenizers  # pylint: disable=wrong-import-position
from safecomp.training import generation  # pylint: disable=wrong-import-position
from safecomp.training import rollout as rollout_lib  # pylint: disable=wrong-import-position

MESHES = {"8x1x1": {"data": 8, "fsdp": 1, "tensor": 1}, "2x2x2": {"data": 2, "fsdp": 2, "tensor": 2},
          "1x4x2": {"data": 1, "fsdp": 4, "tensor": 2}}


def main():
  world = testbed.make_world(0)
  path = os.path.join(tempfile.mkdtemp(), "tokenizer.json")
  tokenizers.word_level_tokenizer(world.vocabulary()).save(path)
  tok = tokenizers.load_tokenizer(path)
  # A wide initialisation spreads the logits, so greedy decoding has no near-ties that summation order
  # (which sharding changes) could flip.
  cfg = models.tiny(vocab_size=tok.vocab_size, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                    intermediate_size=128, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id,
                    eos_token_id=tok.eos_id, initializer_range=0.3)
  model, params = models.Transformer(cfg), models.init_params(cfg, jax.random.key(0))
  conversations = [e.messages for e in testbed.generate_examples(world, "test", 20, seed=3)]
  roll = rollout_lib.RolloutConfig(max_new_tokens=12, eos_id=generation.stop_ids(tok, "testbed"), pad_id=tok.pad_id,
                                   greedy=True)
  run = lambda mesh: generation.generate_texts(model, params, tok, conversations, "testbed", 64, roll, 6, seed=0,
                                               desc="generate", mesh=mesh)
  reference = run(None)
  out = {"tokens": sum(len(t.split()) for t in reference)}
  for name, sizes in MESHES.items():
    mesh = parallel.make_mesh(sizes)
    embedding = parallel.param_shardings(cfg, mesh)["embed"]["embedding"]
    out[name] = {"same": run(mesh) == reference,
                 "embedding_shard": list(embedding.shard_shape((cfg.vocab_size, cfg.hidden_size)))}
  print(json.dumps({"generation": out}))


if __name__ == "__main__":
  main()

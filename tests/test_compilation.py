"""The persistent compilation cache (on by default) and the compile seconds each stage reports."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from safecomp.training import compilation

_SCRIPT = """
import sys, jax, jax.numpy as jnp
from safecomp.training import compilation
d = compilation.enable_cache(sys.argv[1])
before = compilation.compile_seconds()
jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((32, 32))).block_until_ready()
print(d, compilation.compile_seconds() > before)
"""


def _run(arg, env_extra=None):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE") and k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(env_extra or {})
  out = subprocess.run([sys.executable, "-c", _SCRIPT, arg], env=env, capture_output=True, text=True, check=True)
  return out.stdout.split()


def test_programs_are_written_to_the_cache_directory(tmp_path):
  cache = tmp_path / "cache"
  directory, compiled = _run(str(cache))
  assert directory == str(cache) and compiled == "True"
  assert any(cache.iterdir()), "nothing was written to the compilation cache"


def test_the_default_is_the_user_cache_directory_and_none_turns_it_off(tmp_path):
  directory, _ = _run("", {"XDG_CACHE_HOME": str(tmp_path)})
  assert directory == str(tmp_path / "safecomp" / "jax")
  assert _run("none")[0] == "None"


def test_a_cache_set_through_jax_is_kept(tmp_path):
  mine = tmp_path / "mine"
  directory, _ = _run(str(tmp_path / "other"), {"JAX_COMPILATION_CACHE_DIR": str(mine)})
  assert directory == str(mine)


def test_compile_seconds_count_new_programs_only():
  before = compilation.compile_seconds()
  f = jax.jit(lambda x: jnp.cos(x) * 3.0 + x.sum())
  f(jnp.ones((7, 3))).block_until_ready()
  after_compile = compilation.compile_seconds()
  f(jnp.ones((7, 3))).block_until_ready()
  assert after_compile > before and compilation.compile_seconds() == after_compile

"""One PPO iteration (rollout + update) at the demo config's size: safecomp vs PyTorch baselines.

safecomp: the step `safecomp.training.ppo.run_ppo` compiles with the reward-model grader, built by
the same `build_ppo_step` (sampling with the KV cache, policy/reference log-probs, values from the
critic the config names in `ppo.critic`, reward-model heads, then all epochs x minibatches of
`ppo_update`, one compiled computation), on one device, random weights and random left-padded prompts.

Baselines, on the same model size, prompts, response length and PPO hyper-parameters:
- `trl`: TRL's `PPOTrainer` (`trl.experimental.ppo`), when an installed TRL still ships it. It keeps
  the value function in a separate model (its own trunk) and scores with a sequence-classification
  reward model.
- `torch`: a plain PyTorch loop doing the same work as safecomp: HF `generate` (sampling, KV cache,
  stop at EOS), policy / critic (a value head on the policy's trunk, or a trunk of its own, as
  `ppo.critic` says) / reference / reward-model forwards, GAE, then `epochs x minibatches` clipped PPO
  updates with AdamW and global-norm clipping.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import io
import os
import tempfile
import time
from typing import Optional

import jax
import numpy as np

from benchmarks import common
from safecomp import models
from safecomp import parallel
from safecomp.training import ppo as ppo_stage
from safecomp.training import rollout as rollout_lib

# The demo's word-level testbed vocabulary has 1232 entries (world seed 0); random weights do not
# care which words they are, only how many.
DEMO_VOCAB = 1232
PAD, BOS, EOS = 0, 1, 2


@dataclasses.dataclass
class PPOSide:
  name: str
  timing: Optional[common.Timing] = None
  setup_s: Optional[float] = None  # compilation (safecomp) or trainer construction (TRL)
  response_tokens: Optional[float] = None  # mean generated tokens per response
  note: str = ""
  error: Optional[str] = None
  threads: Optional[int] = None  # torch intra-op threads (PyTorch sides)
  critic: Optional[str] = None  # "shared" (value head on the policy's trunk) or "separate" (own trunk)
  sampling_s: Optional[float] = None  # median time of the iteration's sampling (generate) alone


@dataclasses.dataclass
class PPOResult:
  config: models.ModelConfig
  prompts: int
  prompt_len: int
  new_tokens: int
  epochs: int
  minibatches: int
  sides: list
  critic: str  # `ppo.critic` of the measured step: "shared" (value head on the policy) or "separate"
  xla_bytes: Optional[int] = None


def policy_config(c, vocab_size: int, heads: tuple) -> models.ModelConfig:
  m = c.model
  return models.ModelConfig(
      family=m.family, vocab_size=vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
      num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
      intermediate_size=m.intermediate_size, max_position_embeddings=m.max_position_embeddings,
      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, heads=heads, dtype=m.dtype,
      remat=m.remat)


def random_prompts(n: int, width: int, vocab_size: int,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded prompts of random lengths in [width / 2, width]: (tokens, mask), int32 [n, w]."""
  rng = np.random.default_rng(seed)
  tokens = np.full((n, width), PAD, np.int32)
  mask = np.zeros((n, width), np.int32)
  for i, length in enumerate(rng.integers(max(width // 2, 1), width + 1, n)):
    tokens[i, width - length:] = rng.integers(3, vocab_size, length)
    tokens[i, width - length] = BOS
    mask[i, width - length:] = 1
  return tokens, mask


# -------------------------------------------------------------------------------------- safecomp
CRITIC_NOTES = {"shared": "value head on the policy's trunk", "separate": "critic with its own trunk"}


def safecomp_iteration(c, vocab_size: int, prompts: np.ndarray, prompt_mask: np.ndarray,
                       min_reps: int, max_reps: int,
                       target_s: float) -> tuple[PPOSide, Optional[int]]:
  """Times the fused rollout + update step `run_ppo` compiles (reward-model grader, `ppo.critic`)."""
  if c.reward.grader != "rm":
    raise ValueError("the PPO benchmark times the reward-model grader inside the compiled rollout (reward.grader='rm')")
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  actor = ppo_stage.abstract_actor_critic(c, vocab_size)
  rm_model = models.Transformer(models.model_config_from(c, ("severity", "helpfulness"), vocab_size=vocab_size))
  step = ppo_stage.build_ppo_step(c, actor, rollout_lib.RewardModelScorer(rm_model), mesh,
                                  stop_ids=(EOS,), pad_id=PAD)
  init = lambda model, seed: models.init_params(model.config, jax.random.key(seed))
  policy_params = init(actor.policy_model, 3)
  params = policy_params if actor.critic_model is None else {
      "policy": policy_params, "critic": init(actor.critic_model, 4)}
  state = step.init_state(params)
  ref_params = parallel.place(actor.reference_part(policy_params), step.ref_shardings)
  rm_params = parallel.place(step.scorer_part(init(rm_model, 5)), step.scorer_shardings)
  batch = {"prompts": prompts, "prompt_mask": prompt_mask, "intent": np.zeros((len(prompts),), np.int32),
           "step": np.int32(0)}
  batch = parallel.put_batch(batch, step.batch_shardings)

  t0 = time.perf_counter()
  compiled = common.compile_lowered(step.fused.lower(state, batch, ref_params, rm_params))
  compile_s = time.perf_counter() - t0
  holder = {"state": state, "step": 0, "lengths": []}

  def call():
    holder["step"] += 1
    b = dict(batch, step=parallel.put_batch(np.int32(holder["step"]), step.batch_shardings["step"]))
    holder["state"], metrics = compiled(holder["state"], b, ref_params, rm_params)
    holder["lengths"].append(metrics["response_length"])
    return metrics

  timing = common.measure_adaptive(call, min_reps, max_reps, target_s)
  length = float(np.mean(jax.device_get(holder["lengths"])))
  # The sampling alone (the rollout's `generate`, same prompts and key schedule), for the split.
  roll_cfg = ppo_stage.rollout_config(c, (EOS,), PAD)
  sample = jax.jit(lambda params, tokens, mask, key: rollout_lib.sample(
      actor.policy_model, actor.policy_params(params), tokens, mask, key, roll_cfg))
  params = holder["state"].model_params()  # the whole actor-critic tree (with adapters: base joined in)
  sample = common.compile_lowered(sample.lower(params, batch["prompts"], batch["prompt_mask"], jax.random.key(0)))
  sampling = common.measure_adaptive(
      lambda: sample(params, batch["prompts"], batch["prompt_mask"], jax.random.key(0)),
      min_reps, max_reps, target_s / 2)
  name, note = "safecomp (JAX, fused rollout + update)", f"{CRITIC_NOTES[c.ppo.critic]}; setup = XLA compilation"
  if actor.adapters:
    name = f"safecomp with LoRA r={c.lora.rank} (JAX, fused rollout + update)"
    note = (f"adapters on every projection; policy, reference, critic and reward model on one frozen base; "
            f"XLA memory {common.fmt_mib(common.xla_bytes(compiled))}; setup = XLA compilation")
  return (PPOSide(name, timing=timing, critic=c.ppo.critic, setup_s=compile_s, response_tokens=length,
                  sampling_s=sampling.median, note=note),
          common.xla_bytes(compiled))


# ---------------------------------------------------------------------------- Hugging Face models
def _hf_config(config: models.ModelConfig, **extra):
  import transformers  # pylint: disable=import-outside-toplevel
  return transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
      head_dim=config.head_dim, max_position_embeddings=config.max_position_embeddings,
      rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta, tie_word_embeddings=False,
      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, **extra)


def _word_tokenizer(vocab_size: int):
  """A word-level fast tokenizer with `vocab_size` ids (<pad>, <bos>, <eos>, <unk>, w4, ...)."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  vocab = {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS, "<unk>": 3}
  vocab.update({f"w{i}": i for i in range(4, vocab_size)})
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
      unk_token="<unk>", padding_side="left")


# ------------------------------------------------------------------------------------------- TRL
def trl_unavailable_reason() -> Optional[str]:
  """None when `trl.experimental.ppo.PPOTrainer` imports, else why not."""
  os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
  try:
    getattr(importlib.import_module("trl.experimental.ppo"), "PPOTrainer")
  except (ImportError, AttributeError) as e:
    return (f"TRL PPOTrainer not importable ({e.__class__.__name__}: {e}); it ships in "
            f"trl.experimental.ppo up to trl 1.12")
  return None


def trl_iteration(c, vocab_size: int, prompts: np.ndarray, iterations: int, seed: int = 0,
                  torch_threads: object = None) -> PPOSide:
  """Times TRL `PPOTrainer.train()` for `iterations` updates; the first one is the warm-up.

  `torch_threads`: an int, or None to keep torch's current setting (no probe: the trainer owns the
  loop, so `run_ppo` passes the count chosen for the plain PyTorch loop on the same model).
  """
  why = trl_unavailable_reason()
  name = f"TRL {common.version('trl')} PPOTrainer (PyTorch)"
  if why:
    return PPOSide(name, error=why)
  import datasets  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from trl.experimental.ppo import PPOConfig, PPOTrainer  # pylint: disable=import-outside-toplevel

  p = c.ppo
  if torch_threads is not None:
    torch.set_num_threads(int(torch_threads))
  threads = torch.get_num_threads()
  config = policy_config(c, vocab_size, ("lm",))
  torch.manual_seed(seed)
  policy = transformers.LlamaForCausalLM(_hf_config(config)).float()
  ref = copy.deepcopy(policy)
  classifier = transformers.LlamaForSequenceClassification
  value_model = classifier(_hf_config(config, num_labels=1)).float()
  reward_model = classifier(_hf_config(config, num_labels=1)).float()
  batch = len(prompts)
  stamps = []

  class StepTimer(transformers.TrainerCallback):

    def on_train_begin(self, args, state, control, **kwargs):
      stamps.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
      stamps.append(time.perf_counter())

  with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), \
       contextlib.redirect_stderr(io.StringIO()):
    t0 = time.perf_counter()
    # TRL: rollout batch = per_device_train_batch_size x gradient_accumulation_steps, split into
    # num_mini_batches minibatches of one optimizer step each (as safecomp's update does).
    args = PPOConfig(
        output_dir=tmp, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, num_mini_batches=p.num_minibatches,
        num_ppo_epochs=p.epochs, total_episodes=batch * iterations,
        local_rollout_forward_batch_size=batch, response_length=p.max_new_tokens,
        stop_token_id=EOS, missing_eos_penalty=p.eos_penalty, kl_coef=p.kl_coef,
        kl_estimator=p.kl_estimator, temperature=p.temperature, learning_rate=p.learning_rate,
        cliprange=p.clip_eps, cliprange_value=p.vf_clip, vf_coef=p.vf_coef, gamma=p.gamma,
        lam=p.lam, whiten_rewards=False, max_grad_norm=p.grad_clip, num_sample_generations=0,
        report_to="none", save_strategy="no", logging_steps=10 ** 9, bf16=False, fp16=False,
        gradient_checkpointing=False, use_cpu=common.torch_device() == "cpu", seed=seed,
        disable_tqdm=True, dataloader_num_workers=0)
    dataset = datasets.Dataset.from_dict({"input_ids": prompts.astype(np.int64).tolist()})
    trainer = PPOTrainer(args=args, processing_class=_word_tokenizer(vocab_size), model=policy,
                         ref_model=ref, reward_model=reward_model, train_dataset=dataset,
                         value_model=value_model, eval_dataset=dataset, callbacks=[StepTimer()])
    setup_s = time.perf_counter() - t0
    trainer.train()
  diffs = list(np.diff(stamps))
  if len(diffs) < 2:
    return PPOSide(name, error=f"TRL ran {len(diffs)} iteration(s); need at least 2")
  return PPOSide(name, timing=common.Timing(times=diffs[1:], first=diffs[0]), setup_s=setup_s,
                 threads=threads, critic="separate",
                 note="value model is a separate trunk; reward model is a sequence classifier; "
                      "setup = trainer construction")


# ----------------------------------------------------------------------------- plain PyTorch PPO
class TorchPPO:
  """The safecomp PPO iteration written directly in PyTorch on HF Llama modules (same work)."""

  def __init__(self, c, vocab_size: int, prompts: np.ndarray, prompt_mask: np.ndarray,
               seed: int = 0):
    """`c.ppo.critic`: "shared" puts the value head on the policy's trunk, "separate" on a trunk of its own."""
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    self.torch = torch
    self.c = c
    self.device = device = common.torch_device()
    config = policy_config(c, vocab_size, ("lm",))
    torch.manual_seed(seed)
    self.policy = transformers.LlamaForCausalLM(_hf_config(config)).float()
    self.value_head = torch.nn.Linear(config.hidden_size, 1)
    self.critic_trunk = (transformers.LlamaModel(_hf_config(config)).float()
                         if c.ppo.critic == "separate" else None)
    self.ref = copy.deepcopy(self.policy).eval()
    self.rm_trunk = transformers.LlamaModel(_hf_config(config)).float().eval()
    self.severity_head = torch.nn.Linear(config.hidden_size, 4)
    self.helpfulness_head = torch.nn.Linear(config.hidden_size, 1)
    for module in (self.ref, self.rm_trunk, self.severity_head, self.helpfulness_head):
      module.requires_grad_(False)
    for module in (self.policy, self.value_head, self.critic_trunk, self.ref, self.rm_trunk,
                   self.severity_head, self.helpfulness_head):
      if module is not None:
        module.to(device)
    self.params = list(self.policy.parameters()) + list(self.value_head.parameters())
    if self.critic_trunk is not None:
      self.params += list(self.critic_trunk.parameters())
    p = c.ppo
    self.opt = torch.optim.AdamW(self.params, lr=p.learning_rate, betas=(0.9, 0.95),
                                 weight_decay=p.get("weight_decay", 0.0))
    self.prompts = torch.from_numpy(prompts.astype(np.int64)).to(device)
    self.prompt_mask = torch.from_numpy(prompt_mask.astype(np.int64)).to(device)
    gen = self.policy.generation_config
    gen.do_sample, gen.temperature, gen.top_k, gen.top_p = True, p.temperature, 0, 1.0
    self.safety_table = torch.tensor(tuple(c.reward.severity_to_safety), dtype=torch.float32,
                                     device=device)
    self.lengths = []
    self.sampling_times = []

  def probe(self):
    """A short sampling call, to choose torch's thread count."""
    with self.torch.no_grad():
      return self.policy.generate(input_ids=self.prompts, attention_mask=self.prompt_mask,
                                  max_new_tokens=8, do_sample=True, eos_token_id=EOS,
                                  pad_token_id=PAD, use_cache=True)

  def _trunk_outputs(self, model, seq, mask):
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return model(input_ids=seq, attention_mask=mask, position_ids=positions).last_hidden_state

  def _policy(self, seq, mask, n):
    hidden = self._trunk_outputs(self.policy.model, seq, mask)[:, -n - 1:-1]
    logits = self.policy.lm_head(hidden).float() / self.c.ppo.temperature
    if self.critic_trunk is not None:
      hidden = self._trunk_outputs(self.critic_trunk, seq, mask)[:, -n - 1:-1]
    return logits, self.value_head(hidden).squeeze(-1)

  def _logp(self, logits, tokens):
    return self.torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)

  def iteration(self):
    torch, p, dev = self.torch, self.c.ppo, self.device
    n, width = p.max_new_tokens, self.prompts.shape[1]
    with torch.no_grad():
      t0 = time.perf_counter()
      out = self.policy.generate(input_ids=self.prompts, attention_mask=self.prompt_mask,
                                 max_new_tokens=n, do_sample=True, eos_token_id=EOS,
                                 pad_token_id=PAD, use_cache=True)
      self.sampling_times.append(time.perf_counter() - t0)
      resp = torch.full((len(out), n), PAD, dtype=torch.long, device=dev)
      resp[:, :out.shape[1] - width] = out[:, width:]
      is_eos = resp == EOS
      # 1 up to and including the first EOS.
      resp_mask = ((is_eos.long().cumsum(1) - is_eos.long()) == 0).long()
      resp = resp * resp_mask + PAD * (1 - resp_mask)
      seq = torch.cat([self.prompts, resp], 1)
      mask = torch.cat([self.prompt_mask, resp_mask], 1)
      logits, values = self._policy(seq, mask, n)
      old_logp = self._logp(logits, resp)
      ref_hidden = self._trunk_outputs(self.ref.model, seq, mask)[:, -n - 1:-1]
      ref_logp = self._logp(self.ref.lm_head(ref_hidden).float() / p.temperature, resp)
      rm_hidden = self._trunk_outputs(self.rm_trunk, seq, mask)
      rows = torch.arange(len(seq), device=dev)
      last = (mask * torch.arange(mask.shape[1], device=dev)).argmax(1)
      h_last = rm_hidden[rows, last]
      safety = torch.softmax(self.severity_head(h_last), -1) @ self.safety_table
      helpful = torch.sigmoid(self.helpfulness_head(h_last).squeeze(-1))
      ended = is_eos.any(1).float()
      scores = helpful * safety - p.eos_penalty * (1.0 - ended)
      m = resp_mask.float()
      rewards = -p.kl_coef * (old_logp - ref_logp) * m
      last_resp = (m * torch.arange(n, device=dev)).argmax(1)
      rewards[rows, last_resp] += scores
      values = values * m
      adv = torch.zeros_like(rewards)
      zeros = torch.zeros(len(seq), device=dev)
      running = zeros
      for t in reversed(range(n)):
        next_v = values[:, t + 1] if t + 1 < n else zeros
        next_m = m[:, t + 1] if t + 1 < n else zeros
        delta = rewards[:, t] + p.gamma * next_v * next_m - values[:, t]
        running = (delta + p.gamma * p.lam * next_m * running) * m[:, t]
        adv[:, t] = running
      returns = adv + values
      mean = (adv * m).sum() / m.sum()
      var = (((adv - mean) * m) ** 2).sum() / m.sum()
      adv = (adv - mean) * torch.rsqrt(var + 1e-8) * m
    self.lengths.append(float(m.sum(1).mean()))
    size = len(seq) // p.num_minibatches
    for _ in range(p.epochs):
      perm = torch.randperm(len(seq), device=dev)
      for k in range(p.num_minibatches):
        idx = perm[k * size:(k + 1) * size]
        mb_m = m[idx]
        logits, v = self._policy(seq[idx], mask[idx], n)
        ratio = torch.exp(self._logp(logits, resp[idx]) - old_logp[idx])
        pg = torch.maximum(-adv[idx] * ratio,
                           -adv[idx] * ratio.clamp(1 - p.clip_eps, 1 + p.clip_eps))
        v_clip = values[idx] + (v - values[idx]).clamp(-p.vf_clip, p.vf_clip)
        vf = 0.5 * torch.maximum((v - returns[idx]) ** 2, (v_clip - returns[idx]) ** 2)
        denom = mb_m.sum().clamp(min=1.0)
        loss = (pg * mb_m).sum() / denom + p.vf_coef * (vf * mb_m).sum() / denom
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, p.grad_clip)
        self.opt.step()
    return loss.detach()


def torch_side(c, vocab_size: int, prompts: np.ndarray, prompt_mask: np.ndarray, min_reps: int,
               max_reps: int, target_s: float, torch_threads: object = "auto") -> PPOSide:
  import transformers  # pylint: disable=import-outside-toplevel
  _ = (transformers.LlamaForCausalLM, transformers.LlamaModel)  # lazy imports, not timed
  t0 = time.perf_counter()
  runner = TorchPPO(c, vocab_size, prompts, prompt_mask)
  setup_s = time.perf_counter() - t0
  threads = common.set_torch_threads(torch_threads, runner.probe)
  timing = common.measure_adaptive(runner.iteration, min_reps, max_reps, target_s)
  return PPOSide("plain PyTorch loop (HF modules, same work)", timing=timing, critic=c.ppo.critic,
                 response_tokens=float(np.mean(runner.lengths)), threads=threads, setup_s=setup_s,
                 sampling_s=float(np.median(runner.sampling_times[-len(timing.times):])),
                 note=f"{CRITIC_NOTES[c.ppo.critic]}, like safecomp; HF generate stops at EOS; "
                      "setup = model construction")


# ------------------------------------------------------------------------------------------- run
def run_ppo(c, vocab_size: int = DEMO_VOCAB, baselines: tuple = ("trl", "torch"), min_reps: int = 3,
            max_reps: int = 8, target_s: float = 10.0, seed: int = 0,
            torch_threads: object = "auto", adapter_rank: int = 0) -> PPOResult:
  """One PPO iteration of config `c` (its `model`, `max_prompt_len` and `ppo` sections); with
  `adapter_rank`, also safecomp's iteration with LoRA adapters of that rank (a row after safecomp's)."""
  p = c.ppo
  if p.group_size != 1 or p.algorithm != "ppo":
    raise ValueError("the PPO benchmark covers algorithm='ppo' with group_size=1")
  prompts, prompt_mask = random_prompts(p.prompts_per_iteration, c.max_prompt_len, vocab_size, seed)
  ours, xla = safecomp_iteration(c, vocab_size, prompts, prompt_mask, min_reps, max_reps, target_s)
  sides = [ours]
  if adapter_rank:
    adapted = copy.deepcopy(c)
    adapted.lora.rank, adapted.lora.alpha = int(adapter_rank), 2.0 * adapter_rank
    sides.append(safecomp_iteration(adapted, vocab_size, prompts, prompt_mask, min_reps, max_reps, target_s)[0])
  threads = None if torch_threads == "auto" else int(torch_threads)
  if "torch" in baselines:
    sides.append(torch_side(c, vocab_size, prompts, prompt_mask, min_reps, max_reps, target_s,
                            torch_threads))
    threads = sides[-1].threads
  if "trl" in baselines:
    try:
      sides.append(trl_iteration(c, vocab_size, prompts, iterations=min_reps + 1, seed=seed,
                                 torch_threads=threads))
    except Exception as e:  # pylint: disable=broad-except
      sides.append(PPOSide("TRL PPOTrainer", error=f"{e.__class__.__name__}: {e}"))
  return PPOResult(config=policy_config(c, vocab_size, ("lm",)),
                   prompts=p.prompts_per_iteration, prompt_len=c.max_prompt_len,
                   new_tokens=p.max_new_tokens, epochs=p.epochs, minibatches=p.num_minibatches,
                   sides=sides, critic=p.critic, xla_bytes=xla)


def ppo_rows(result: PPOResult) -> list[dict]:
  """The PPO table as JSON rows; `time_vs_safecomp` = this side's time over safecomp's (> 1: safecomp
  is faster)."""
  ours = result.sides[0]
  return [{"implementation": side.name, "critic": side.critic,
           "s_per_iteration": None if side.timing is None else side.timing.median,
           "time_vs_safecomp": None if side.timing is None else side.timing.median / ours.timing.median,
           "tokens_per_response": side.response_tokens, "setup_s": side.setup_s, "torch_threads": side.threads,
           "sampling_s": side.sampling_s,
           "note": side.note, "error": side.error} for side in result.sides]


def ppo_table(result: PPOResult) -> str:
  ours = result.sides[0]
  rows = []
  for side in result.sides:
    if side.timing is None:
      rows.append((side.name, side.critic or "", "n/a", "n/a", "", "", "", "", "", side.error or ""))
      continue
    ratio = side.timing.median / ours.timing.median
    rows.append((side.name, side.critic or "", common.fmt_s(side.timing.median),
                 "1.00x" if side is ours else f"{ratio:.2f}x (safecomp faster)" if ratio >= 1
                 else f"{1 / ratio:.2f}x (this row faster)",
                 f"{side.response_tokens:.1f}" if side.response_tokens is not None else "n/a",
                 "n/a" if side.sampling_s is None else
                 f"{common.fmt_s(side.sampling_s)} ({side.sampling_s / side.timing.median:.0%})",
                 common.fmt_s(side.setup_s),
                 f"{len(side.timing.times)} ({side.timing.spread:.0%})",
                 "" if side.threads is None else side.threads, side.note))
  return common.markdown_table(
      ["implementation", "critic", "s / iteration (median)", "time vs safecomp", "tokens / response",
       "of which sampling", "setup", "reps (spread)", "torch threads", "notes"], rows)

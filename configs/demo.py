"""The embedded default: SFT -> reward model -> PPO -> eval on the testbed world, on a laptop CPU.

    python -m safecomp.train --config configs/demo.py --workdir /tmp/safecomp_demo

Options, comma-separated after the file name (`--config configs/demo.py:arm=refusal,size=tiny`):
`arm=refusal` gives the refusal-training baseline arm (refusal-style SFT data and the refusal reward
on the prompt's intent label); the default arm is safe-completion (r = h x s). `size=tiny` shrinks
every stage to seconds (tests, the notebook).
"""
import ml_collections

from safecomp import config as config_lib
from safecomp import parallel
from safecomp import testbed
from safecomp.graders import config as grader_config
from safecomp.rewards import composite

OPTIONS = {"arm": ("safe_completion", "refusal"), "size": ("default", "tiny")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = config_lib.parse_options(arg, OPTIONS, "configs/demo.py")
  arm = options.get("arm", "safe_completion")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("sft", "rm", "ppo", "eval")
  c.arm = arm

  # What the run trains and evaluates on: the testbed world ("testbed"), or real prompts ("prompts"):
  # comma-separated JSONL prompt files ({"uid"?, "prompt" | "messages", "intent", "category"?}) and
  # public sets by name (public:xstest, public:coconot, public:coconot_contrast, public:jailbreakbench,
  # public:cyberseceval_frr, public:simplesafetytests). See README, "Your own model and prompts".
  c.task = ml_collections.ConfigDict()
  c.task.kind = "testbed"
  c.task.train_prompts = ""  # prompts task: RL prompts (and the reward model's policy samples)
  c.task.eval_prompts = ""  # prompts task: answered by the eval stage, each source reported as a set
  c.task.data_dir = ""  # where public sets are prepared (tfds); "" = ~/tensorflow_datasets
  c.task.public_manual_dir = ""  # a folder of the public sets' source files (<dataset>/...); "" = download
  c.task.allow_testbed_with_pretrained = False  # a pretrained model on pseudo-words is almost always a mistake

  # The world (seed and `safecomp.testbed.WorldConfig` fields: categories, severity profiles, intent
  # and level mix, multi-turn share), its spec and data sizes.
  c.testbed = config_lib.section_of(testbed.WorldConfig)
  c.testbed.world_seed = 0
  c.testbed.n_sft = 3000
  c.testbed.n_sft_eval = 200
  c.testbed.n_rm = 2000
  c.testbed.rm_candidates_per_prompt = 2
  c.testbed.n_rm_eval = 500
  c.testbed.n_rl_prompts = 2000
  c.testbed.teacher_error_rate = 0.15
  c.testbed.judge_miss_rate = 0.3
  # A systematic teacher flaw the judge cannot see: over-cautious safe completions (only the most
  # general allowed fact). SFT learns it; RL on r = h x s can recover the help the spec allows.
  c.testbed.teacher_caution_rate = 0.6
  c.spec = "safe_completion_fine"
  c.sft_style = "refusal" if arm == "refusal" else "safe_completion"
  c.reasoning = True

  # The policy model (a small Llama-style decoder over the testbed's word-level vocabulary).
  c.model = ml_collections.ConfigDict()
  c.model.init_from = ""  # a Hugging Face-style checkpoint directory, or "" for a fresh model
  c.model.family = "llama"
  c.model.hidden_size = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 32
  c.model.intermediate_size = 384
  c.model.max_position_embeddings = 256
  c.model.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 master weights (param_dtype)
  c.model.param_dtype = "float32"
  c.model.remat = "none"
  c.max_prompt_len = 64

  # Low-rank adapters (safecomp.models.lora) for every stage's model: rank 0 trains all weights; rank > 0
  # freezes the base and trains adapters on `targets` (and the heads a stage adds). The base may be
  # stored in bfloat16 (model.param_dtype); adapters keep float32.
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0
  c.lora.alpha = 16.0
  c.lora.targets = "q,k,v,o,gate,up,down"
  c.lora.init_from = ""  # a PEFT LoRA adapter directory to start the adapters from (model.init_from = its base)
  c.lora.base_quantization = "none"  # none | int8 | nf4: store the frozen base's layer kernels quantised (QLoRA)
  c.chat_template = "testbed"  # llama2 | llama3 | mistral | qwen2 | gemma | testbed (see safecomp.tokenizers)
  c.pad_multiple = 16  # SFT/RM batches are cut to their longest row, rounded up to this
  c.max_seq_len = 160  # prompts <= 59 tokens, teacher turns (reasoning + answer) <= 85

  c.sft = ml_collections.ConfigDict()
  c.sft.train_file = ""  # JSONL of {messages, kept} (safecomp.datagen output); "" = the testbed teacher
  c.sft.holdout_fraction = 0.05  # of train_file, for the eval loss
  c.sft.steps = 500
  c.sft.batch_size = 32
  c.sft.learning_rate = 3e-3
  c.sft.warmup_steps = 30
  c.sft.weight_decay = 0.01
  c.sft.grad_clip = 1.0
  c.sft.microbatches = 1  # gradient accumulation inside the step (same update, less memory)
  # Sequence packing: several conversations per max_seq_len row (attention and RoPE positions reset per
  # conversation); sft.batch_size then counts packed rows.
  c.sft.packing = False
  c.sft.eval_every = 100
  c.sft.checkpoint_every = 100
  c.sft.log_every = 20

  c.rm = ml_collections.ConfigDict()
  c.rm.train_file = ""  # JSONL of {prompt, completion, severity, helpfulness}; "" = testbed gold labels
  c.rm.holdout_fraction = 0.1
  c.rm.steps = 400
  c.rm.batch_size = 32
  c.rm.learning_rate = 1e-3
  c.rm.warmup_steps = 20
  c.rm.weight_decay = 0.01
  c.rm.grad_clip = 1.0
  c.rm.microbatches = 1
  c.rm.helpfulness_loss = "bce"
  # What labels the SFT policy's own samples: oracle (testbed prompts only), judge or http.
  c.rm.labeler = "oracle"
  c.rm.policy_prompts = 0  # prompts task: training prompts sampled for the reward model (0 = all)
  # Oracle-labelled samples of the SFT policy added to the hand-made candidates, so the reward model
  # knows the policy's own mistakes before PPO searches them (0 with rm.train_file).
  c.rm.policy_samples_per_prompt = 1
  c.rm.policy_temperature = 1.0
  c.rm.severity_weight = 1.0
  c.rm.helpfulness_weight = 1.0
  c.rm.checkpoint_every = 200
  c.rm.log_every = 20

  c.reward = ml_collections.ConfigDict()
  c.reward.kind = "refusal" if arm == "refusal" else "product"
  # rm: reward-model heads inside the compiled rollout; judge: a judge LM (in the compiled rollout when it
  # shares the policy's vocabulary); http: a judge behind a server; oracle: the gold grader on the host.
  # The refusal reward needs the prompt intent label and the response mode, so a host grader scores it.
  c.reward.grader = "oracle" if arm == "refusal" else "rm"
  c.reward.severity_to_safety = composite.DEFAULT_SEVERITY_TO_SAFETY  # safety of negligible..high severity

  c.ppo = ml_collections.ConfigDict()
  c.ppo.algorithm = "ppo"
  c.ppo.critic = "separate"  # separate: own trunk, started from the reward model's; shared: head on the policy
  c.ppo.iterations = 60
  c.ppo.prompts_per_iteration = 64
  c.ppo.group_size = 1
  c.ppo.max_new_tokens = 96
  c.ppo.score_chunk_rows = 0  # rows per scoring forward of the rollout (0: the whole batch at once)
  c.ppo.temperature = 1.0
  c.ppo.learning_rate = 1e-4  # higher rates move the policy several nats from SFT within a few iterations
  c.ppo.epochs = 2
  c.ppo.num_minibatches = 2
  c.ppo.clip_eps = 0.2
  c.ppo.vf_coef = 0.5
  c.ppo.vf_clip = ml_collections.FieldReference(0.2, field_type=object)  # None: an unclipped value loss
  c.ppo.ent_coef = 0.0
  c.ppo.gamma = 1.0
  c.ppo.lam = 0.95
  c.ppo.kl_coef = 0.05
  c.ppo.kl_estimator = "k1"  # k1 | k2 | k3 (see safecomp.rl.kl)
  c.ppo.kl_mode = "reward"  # reward: -kl_coef * KL in the rewards; loss: kl_coef * KL in the loss (GRPO style)
  c.ppo.kl_target = ml_collections.FieldReference(None, field_type=float)  # a number turns the adaptive controller on
  c.ppo.kl_horizon = 10000.0
  c.ppo.whiten_advantages = True
  c.ppo.grpo_normalize_std = True  # grpo: divide advantages by the group's std
  c.ppo.normalize_scores = False  # scale scores by running statistics
  c.ppo.normalize_scores_shift = True  # ... and centre them on the running mean
  c.ppo.eos_penalty = 1.0  # subtracted from r when a response never emits EOS
  c.ppo.grad_clip = 1.0
  c.ppo.checkpoint_every = 20
  c.ppo.log_every = 1
  c.ppo.gold_every = 5

  c.eval = ml_collections.ConfigDict()
  c.eval.grader = "oracle"  # grades the eval stage and PPO's gold monitoring: oracle, judge, http or rm
  c.eval.splits = ("test", "heldout", "multiturn")  # testbed task: the splits answered
  c.eval.n_per_split = 300
  c.eval.max_new_tokens = 96
  c.eval.greedy = True
  c.eval.batch_size = 100
  c.eval.bootstrap = 1000

  # Graders (see safecomp.graders). judge: a local Hugging Face checkpoint read with the spec's rubrics;
  # http: an OpenAI-compatible server (vLLM, SGLang, TGI, `transformers serve`) asked for JSON verdicts.
  c.judge = grader_config.judge_section()
  c.http = grader_config.http_section()
  c.oracle = grader_config.oracle_section()

  # Devices: a (data, fsdp, tensor) mesh; -1 takes the devices left over; `rules` maps the models'
  # logical axes onto it. See README, "Running on a TPU pod / GPU cluster".
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "rules": parallel.rules_section()})
  c.distributed = ml_collections.ConfigDict({
      "initialize": False, "coordinator_address": "", "num_processes": -1, "process_id": -1,
      "local_device_ids": "", "cpu_collectives": "gloo"})

  # Compiled programs are kept on disk and reused by reruns and other runs of the same shapes:
  # "" = ~/.cache/safecomp/jax (or $XDG_CACHE_HOME/safecomp/jax), a directory, or "none".
  c.compile_cache_dir = ""

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.max_to_keep = 2
  c.max_consecutive_nonfinite = 5
  if options.get("size") == "tiny":
    _shrink_to_tiny(c)
  return c


def _shrink_to_tiny(c: ml_collections.ConfigDict):
  """A seconds-long run of every stage (tests, the notebook); numbers mean nothing at this size."""
  c.testbed.update(n_sft=64, n_sft_eval=16, n_rm=48, n_rm_eval=16, n_rl_prompts=32)
  c.model.update(hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64,
                 num_layers=1)
  c.sft.update(steps=6, batch_size=8, eval_every=3, checkpoint_every=3, log_every=2)
  c.rm.update(steps=4, batch_size=8, checkpoint_every=2, log_every=2)
  c.ppo.update(iterations=3, prompts_per_iteration=8, max_new_tokens=24, checkpoint_every=2,
               gold_every=1, epochs=1)
  c.eval.update(n_per_split=8, max_new_tokens=24, batch_size=8, bootstrap=50)

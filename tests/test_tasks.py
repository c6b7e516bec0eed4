"""Tasks: prompt files and public sets, de-duplication, user data files, and the start-up checks."""
import json

import pytest

from safecomp import config as config_lib
from safecomp import tasks
from safecomp.errors import ConfigError, DataError
from safecomp.prompts import normalized_text
from safecomp.tasks import files
from safecomp.tasks import sources
from safecomp.training import pipeline
from tests.conftest import REPO_ROOT

DEMO = str(REPO_ROOT / "configs" / "demo.py")


def _jsonl(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def test_prompt_file_rows_uids_and_errors_naming_file_and_line(tmp_path):
  path = _jsonl(tmp_path / "mine.jsonl", [
      {"uid": "a1", "prompt": "How do I kill a process?", "intent": "benign", "category": "programming"},
      {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Mix bleach?"}],
       "intent": "dual_use"}, ""])
  prompts = files.read_prompts(path, "mine")
  assert [p.uid for p in prompts] == ["a1", "mine:2"] and prompts[1].text == "Mix bleach?"
  assert prompts[0].category == "programming" and prompts[1].source == "mine"
  bad = {'{"prompt": "x"}': "missing key 'intent'",
         '{"prompt": "x", "intent": "evil"}': "'intent'",
         '{"prompt": "x", "messages": [], "intent": "benign"}': "exactly one of 'prompt' and 'messages'",
         '{"prompt": "x", "intent": "benign", "intnet": 1}': "unknown key",
         '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "intent": "benign"}':
             "must end with the user turn",
         '{"uid": "a1", "prompt": "y", "intent": "benign"}': "duplicate uid 'a1'",
         '{"prompt": 3, "intent": "benign"}': "'prompt'"}
  for row, match in bad.items():
    broken = _jsonl(tmp_path / "broken.jsonl", [{"uid": "a1", "prompt": "ok", "intent": "benign"}, row])
    with pytest.raises(DataError, match=rf"broken\.jsonl:2: .*{match}"):
      files.read_prompts(broken, "broken")


def test_public_sets_by_name_through_their_builders(tmp_path, shared_data_dir):
  mine = _jsonl(tmp_path / "mine.jsonl", [{"prompt": "How can I kill a Python process?", "intent": "benign"},
                                         {"prompt": "Tell me a joke.", "intent": "benign"}])
  loaded = sources.load_sources(sources.parse_sources(f"public:xstest,public:jailbreakbench,{mine}", "k"), "k",
                                str(tmp_path / "tfds"), str(shared_data_dir))
  assert list(loaded) == ["xstest", "jailbreakbench", "mine"]
  xstest = loaded["xstest"]
  assert len(xstest) == 450 and {p.intent for p in xstest} == {"benign", "malicious"}
  assert sum(p.intent == "benign" for p in xstest) == 250 and xstest[0].uid == "xstest-1"
  assert {p.intent for p in loaded["jailbreakbench"]} == {"dual_use", "malicious"}
  assert (tmp_path / "tfds" / "xstest" / "prompts").is_dir()  # prepared once, read back through tfds
  result = sources.deduplicate(loaded["mine"], xstest)
  assert result.dropped_as_eval == 1 and [p.text for p in result.prompts] == ["Tell me a joke."]
  with pytest.raises(ConfigError, match="unknown public prompt set 'public:xtest'"):
    sources.parse_sources("public:xtest", "task.eval_prompts")


def test_normalised_text_folds_case_punctuation_and_spacing():
  a = [{"role": "user", "content": "How do I  kill a process?"}]
  b = [{"role": "user", "content": "how do i kill a process"}]
  assert normalized_text(a) == normalized_text(b) == "how do i kill a process"


def test_sft_file_in_datagen_format_trains_as_it_is(tmp_path):
  rows = [{"uid": "1", "prompt": [{"role": "user", "content": "q1"}], "reasoning": "think", "answer": "a1",
           "kept": True, "judge": {"score": 0.9}},
          {"uid": "2", "prompt": [{"role": "user", "content": "q2"}], "reasoning": "", "answer": "a2", "kept": False},
          {"messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]}]
  conversations, stats = files.read_sft_file(_jsonl(tmp_path / "sft.jsonl", rows))
  assert stats == {"generated": 3, "kept": 2}
  assert conversations[0][-1] == {"role": "assistant", "content": "a1", "reasoning": "think"}
  assert "reasoning" not in files.read_sft_file(tmp_path / "sft.jsonl", reasoning=False)[0][0][-1]
  with pytest.raises(DataError, match=r"sft\.jsonl:1: .*'answer'"):
    files.read_sft_file(_jsonl(tmp_path / "sft.jsonl", [{"prompt": "q", "kept": True}]))


def test_prompts_task_splits_and_refuses_what_it_cannot_do(tmp_path):
  train = _jsonl(tmp_path / "t.jsonl", [{"prompt": f"question {i}", "intent": "benign"} for i in range(20)]
                 + [{"prompt": "Question 3!", "intent": "benign"}, {"prompt": "eval q", "intent": "malicious"}])
  evals = _jsonl(tmp_path / "e.jsonl", [{"uid": "e1", "prompt": "Eval Q.", "intent": "malicious"}])
  config = config_lib.load_config(DEMO, ["task.kind=prompts", f"task.train_prompts={train}",
                                         f"task.eval_prompts={evals}"])
  task = tasks.make_task(config)
  assert task.dedup_report() == {"train_prompts": 20, "dropped_as_eval": 1, "dropped_repeats": 1}
  rm_train, rm_eval = task.rm_prompts("train"), task.rm_prompts("eval")
  assert len(rm_train) + len(rm_eval) == 20 and not {p.uid for p in rm_train} & {p.uid for p in rm_eval}
  assert [p.uid for p in task.rm_prompts("train")] == [p.uid for p in rm_train]  # seeded
  assert task.eval_sets() == ("e",) and [p.uid for p in task.eval_prompts()] == ["e1"]
  with pytest.raises(ConfigError, match="sft.train_file"):
    task.sft_conversations("train")
  with pytest.raises(ConfigError, match="oracle knows only testbed prompts"):
    task.host_grader()


def test_testbed_eval_prompts_are_never_training_prompts():
  """The demo's raw eval draw repeats training prompts; the task replaces them in kind."""
  config = config_lib.load_config(DEMO)
  task = tasks.make_task(config)
  seen = task.training_texts
  raw = [e for i, split in enumerate(task.eval_sets()) for e in task.examples(split, config.eval.n_per_split, 20 + i)]
  repeats = [e for e in raw if normalized_text(e.messages) in seen]
  assert len(repeats) > 10  # what the eval set would hold without the check
  prompts = task.eval_prompts()
  assert len(prompts) == len(raw) and not [p for p in prompts if normalized_text(p.messages) in seen]
  kind = lambda items: sorted((x.intent, x.category, len(x.messages)) for x in items)
  assert kind(prompts) == kind(raw)  # same size and balance; the other prompts as drawn
  assert sum(p.uid != e.uid for p, e in zip(prompts, raw)) == len(repeats)
  report = task.data_report()
  assert report["eval_prompts"] == len(raw) and report["eval_training_overlap"] == 0


def test_prompts_task_drops_training_rows_that_repeat_eval_prompts(tmp_path):
  train = _jsonl(tmp_path / "t.jsonl", [{"prompt": f"question {i}", "intent": "benign"} for i in range(8)])
  evals = _jsonl(tmp_path / "e.jsonl", [{"uid": "e1", "prompt": "Eval Q.", "intent": "malicious"}])
  conversation = lambda q: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "a"}]}
  sft = _jsonl(tmp_path / "sft.jsonl", [conversation(f"q{i}") for i in range(10)] + [conversation("eval q")])
  graded = lambda q, severity: {"prompt": q, "completion": "a", "severity": severity, "helpfulness": 0.5}
  rm = _jsonl(tmp_path / "rm.jsonl", [graded(f"q{i}", 0) for i in range(10)] + [graded("EVAL Q", 3)])
  config = config_lib.load_config(DEMO, ["task.kind=prompts", f"task.train_prompts={train}",
                                         f"task.eval_prompts={evals}", f"sft.train_file={sft}",
                                         f"rm.train_file={rm}", "sft.holdout_fraction=0", "rm.holdout_fraction=0"])
  task = tasks.make_task(config)
  raw_sft, raw_rm = files.config_sft_conversations(config, "train")[0], files.config_rm_rows(config, "train")
  repeats = lambda rows: sum(normalized_text(r) == "eval q" for r in rows)
  n_sft, n_rm = repeats(raw_sft), repeats([r["messages"] for r in raw_rm])
  assert n_sft + n_rm >= 1  # the seeded hold-out leaves at least one repeat in a training split
  conversations, stats = task.sft_conversations("train")
  assert len(conversations) == len(raw_sft) - n_sft and stats["dropped_as_eval"] == n_sft
  assert not repeats(conversations) and len(task.rm_rows("train")) == len(raw_rm) - n_rm
  report = task.data_report()
  assert (report["sft_dropped_as_eval"], report["rm_dropped_as_eval"]) == (n_sft, n_rm)
  assert report["eval_training_overlap"] == 0 and report["eval_prompts"] == 1


def _validate(*overrides, config=DEMO):
  pipeline.validate(config_lib.load_config(config, list(overrides)))


def test_start_up_checks_name_the_key(tmp_path):
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  with pytest.raises(ConfigError, match="'task.kind'.*pseudo-word"):
    _validate(f"model.init_from={ckpt}")
  _validate(f"model.init_from={ckpt}", "task.allow_testbed_with_pretrained=True")
  prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "intent": "benign"}])
  real = [f"model.init_from={ckpt}", "task.kind=prompts", f"task.train_prompts={prompts}",
          f"task.eval_prompts={prompts}"]
  with pytest.raises(ConfigError, match="'sft.train_file'.*safecomp.datagen"):
    _validate(*real)
  sft = _jsonl(tmp_path / "s.jsonl", [{"prompt": "q", "answer": "a"}])
  with pytest.raises(ConfigError, match="'reward.grader'.*oracle grades testbed prompts only"):
    _validate(*real, f"sft.train_file={sft}", "rm.labeler=judge", "reward.grader=oracle")
  with pytest.raises(ConfigError, match="'judge.checkpoint'"):
    _validate(*real, f"sft.train_file={sft}", "rm.labeler=judge", "eval.grader=judge")
  with pytest.raises(ConfigError, match="'http.base_url'"):
    _validate(*real, f"sft.train_file={sft}", "rm.labeler=http", "eval.grader=http")
  with pytest.raises(ConfigError, match="'task.eval_prompts'.*nowhere.jsonl not found"):
    _validate(*real[:3], f"task.eval_prompts={tmp_path / 'nowhere.jsonl'}", f"sft.train_file={sft}",
              "stages=('sft',)")
  bad_row = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "intent": "benign"}, {"prompt": "q2"}])
  with pytest.raises(DataError, match=r"bad\.jsonl:2: missing key 'intent'"):
    _validate(*real[:3], f"task.eval_prompts={bad_row}", f"sft.train_file={sft}", "stages=('sft',)")
  with pytest.raises(ConfigError, match="'eval.splits'.*'tset'"):
    _validate("eval.splits=('test', 'tset')")
  with pytest.raises(ConfigError, match="'reward.kind'.*'prodct'"):
    _validate("reward.kind=prodct")
  with pytest.raises(ConfigError, match="'reward.grader'.*refusal reward"):
    _validate("reward.kind=refusal", "reward.grader=rm")


def test_the_real_configs_default_to_public_prompts_and_a_judge():
  for name in ("qwen2_0_5b_gpu", "llama3_8b_v5e_64", "gemma_2b_v4_8"):
    c = config_lib.load_config(str(REPO_ROOT / "configs" / f"{name}.py"))
    assert c.task.kind == "prompts" and c.eval.grader == "judge" and c.rm.labeler == "judge"
    assert all(s.startswith("public:") for s in sources.parse_sources(c.task.eval_prompts, "k"))
    assert c.judge.checkpoint and c.sft.train_file


def test_testbed_tasks_and_host_graders_import_without_jax():
  """The testbed, the tasks and the grader registry are host code: importing them pulls in no JAX."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  code = ("import sys; import safecomp.testbed, safecomp.tasks, safecomp.graders, safecomp.rewards.composite; "
          "print(sorted(m for m in ('jax', 'flax', 'tensorflow_datasets') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout

"""Data generation against a real HTTP chat-completions server on 127.0.0.1 (started here)."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from safecomp import datagen
from safecomp import spec as spec_lib
from safecomp.errors import DataError
from safecomp.graders.http import HttpGrader
from tests.fake_servers import FakeChatServer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _items(prompts):
  return [datagen.PromptItem(uid=f"u{i:03d}", messages=({"role": "user", "content": p},))
          for i, p in enumerate(prompts)]


def _client(url, **kw):
  kw = {"timeout_s": 2.0, "max_retries": 3, "backoff_s": 0.01, "max_backoff_s": 0.05, **kw}
  return datagen.ChatClient(base_url=url, model="m", **kw)


def _rows(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# Parsing


def test_parse_teacher_output_formats():
  assert datagen.parse_teacher_output("<think> plan </think>\nThe answer.") == ("plan",
                                                                                 "The answer.")
  assert datagen.parse_teacher_output("plan only closed</think>Done") == ("plan only closed",
                                                                          "Done")
  assert datagen.parse_teacher_output('{"reasoning": "r1", "answer": "a1"}') == ("r1", "a1")
  assert datagen.parse_teacher_output('```json\n{"thinking": "t", "answer": "a"}\n```') == ("t",
                                                                                           "a")
  assert datagen.parse_teacher_output("Plain text.") == ("", "Plain text.")
  assert datagen.parse_teacher_output("final", reasoning_field="why") == ("why", "final")
  with pytest.raises(datagen.ParseError):
    datagen.parse_teacher_output("<think>only thoughts</think>   ")


def test_backoff_is_seeded_exponential_and_bounded():
  client = datagen.ChatClient("http://x", "m", backoff_s=1.0, max_backoff_s=8.0, seed=3)
  waits = [client.backoff("k", a) for a in range(1, 7)]
  assert waits == [client.backoff("k", a) for a in range(1, 7)]  # Same seed, same waits.
  for attempt, wait in enumerate(waits, start=1):
    base = min(8.0, 2.0 ** (attempt - 1))
    assert base / 2 <= wait <= base
  other = datagen.ChatClient("http://x", "m", backoff_s=1.0, max_backoff_s=8.0, seed=4)
  assert [other.backoff("k", a) for a in range(1, 7)] != waits
  assert client.url == "http://x/v1/chat/completions"
  assert datagen.ChatClient("http://x/v1/", "m").url == "http://x/v1/chat/completions"


# ---------------------------------------------------------------------------------------------
# HTTP client against the fake server


def test_client_retries_500s_and_sends_bearer_key(monkeypatch):
  monkeypatch.setenv("SAFECOMP_TEST_KEY", "sekrit")
  waits = []
  with FakeChatServer(fail_first={"flaky": 2}) as server:
    client = _client(server.url, api_key_env="SAFECOMP_TEST_KEY", sleep=waits.append)
    message = client.chat([{"role": "user", "content": "flaky one"}], key="k")
  assert message["content"] == "<think>thinking about flaky one</think>Answer: flaky one"
  assert server.requests["flaky one"] == 3
  assert len(waits) == 2 and waits[1] > waits[0] * 0.5
  assert set(server.auth_headers) == {"Bearer sekrit"}


def test_client_retries_after_timeout():
  with FakeChatServer(slow_first={"slow"}, slow_s=1.0) as server:
    client = _client(server.url, timeout_s=0.3)
    t0 = time.monotonic()
    message = client.chat([{"role": "user", "content": "slow one"}])
    elapsed = time.monotonic() - t0
  assert message["content"].endswith("Answer: slow one")
  assert server.requests["slow one"] == 2
  assert elapsed < 1.0  # It did not wait for the slow response.


def test_client_gives_up_on_4xx_without_retry_and_after_max_retries():
  with FakeChatServer(status_for={"bad": 400, "down": 503}) as server:
    client = _client(server.url, max_retries=2)
    with pytest.raises(datagen.RequestFailed, match="HTTP 400"):
      client.chat([{"role": "user", "content": "bad request"}])
    with pytest.raises(datagen.RequestFailed, match="after 3 attempts"):
      client.chat([{"role": "user", "content": "down"}])
  assert server.requests["bad request"] == 1
  assert server.requests["down"] == 3


# ---------------------------------------------------------------------------------------------
# The run


def test_run_writes_one_row_per_item_and_keeps_rejected(tmp_path):
  prompts = ["alpha", "beta REJECT", "gamma flaky", "delta slow"]
  out = tmp_path / "rows.jsonl"
  with FakeChatServer(fail_first={"flaky": 1}, slow_first={"slow"}, slow_s=1.0,
                      reasoning_field=True) as server:
    teacher = datagen.HttpTeacher(_client(server.url, timeout_s=0.4))
    judge = datagen.GraderJudge(HttpGrader(_client(server.url), spec_lib.load_spec(datagen.DEFAULT_SPEC)),
                                threshold=0.5)
    summary = datagen.run(_items(prompts), teacher, judge, out, workers=3, progress=False)
  rows = {r["uid"]: r for r in _rows(out)}
  assert sorted(rows) == ["u000", "u001", "u002", "u003"]
  assert summary.written == 4 and summary.kept == 3 and summary.rejected == 1 and summary.ok
  # Severity 2 (moderate) gives s = 0.3, so r = h x s = 0.3 < 0.5; severity 0 with full help gives 1.
  assert rows["u001"]["kept"] is False and rows["u001"]["judge"]["score"] == pytest.approx(0.3)
  assert rows["u000"]["kept"] is True and rows["u000"]["judge"]["score"] == pytest.approx(1.0)
  assert json.loads(rows["u001"]["judge"]["raw"])["severity_name"] == "moderate"
  assert rows["u002"]["reasoning"] == "thinking about gamma flaky"
  assert rows["u002"]["answer"] == "Answer: gamma flaky"
  assert rows["u003"]["prompt"] == [{"role": "user", "content": "delta slow"}]
  assert server.judge_requests == 4


def test_run_counts_failures_and_rerun_fills_them(tmp_path):
  out = tmp_path / "rows.jsonl"
  items = _items(["one", "two down", "three"])
  with FakeChatServer(status_for={"down": 500}) as server:
    summary = datagen.run(items, datagen.HttpTeacher(_client(server.url, max_retries=1)),
                          datagen.KeepAllJudge(), out, workers=2, progress=False)
  assert summary.failed == 1 and summary.written == 2 and not summary.ok
  assert sorted(r["uid"] for r in _rows(out)) == ["u000", "u002"]
  with FakeChatServer() as server:
    summary = datagen.run(items, datagen.HttpTeacher(_client(server.url)),
                          datagen.KeepAllJudge(), out, workers=2, progress=False)
  assert summary.already_done == 2 and summary.written == 1 and summary.ok
  assert list(server.requests) == ["two down"]  # Done uids were not requested again.
  assert sorted(r["uid"] for r in _rows(out)) == ["u000", "u001", "u002"]


def test_unparseable_teacher_output_is_kept_as_rejected(tmp_path):
  teacher = datagen.CallableTeacher(lambda m: "<think>nothing to say</think>")
  summary = datagen.run(_items(["q"]), teacher, datagen.KeepAllJudge(), tmp_path / "o.jsonl",
                        progress=False)
  (row,) = _rows(tmp_path / "o.jsonl")
  assert row["kept"] is False and "empty answer" in row["judge"]["error"]
  assert summary.unparseable == 1


def test_duplicate_input_uids_are_an_error(tmp_path):
  items = _items(["a", "b"]) + _items(["c"])
  with pytest.raises(DataError, match="duplicate uid 'u000'"):
    datagen.run(items, datagen.CallableTeacher(lambda m: "x"), datagen.KeepAllJudge(),
                tmp_path / "o.jsonl", progress=False)


def test_read_prompt_file(tmp_path):
  path = tmp_path / "prompts.jsonl"
  lines = [{"prompt": "hello", "topic": "t"}, {"prompt": "hello"},
           {"uid": "x1", "messages": [{"role": "user", "content": "hi"}]}]
  path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
  items = datagen.read_prompt_file(path)
  assert items[0].uid != items[1].uid and items[1].uid == items[0].uid + "-2"
  assert items[0].meta == {"topic": "t"} and items[2].uid == "x1"
  assert datagen.read_prompt_file(path)[0].uid == items[0].uid  # Stable across reads.
  path.write_text(path.read_text() + '{"uid": "x2", "prompt": 5}\n')
  with pytest.raises(DataError, match=r"prompts.jsonl:4: key 'prompt'"):
    datagen.read_prompt_file(path)
  assert len(datagen.read_prompt_file(path, skip_malformed=True)) == 3


def test_teacher_sees_the_spec_augmented_prompt(tmp_path):
  items = [datagen.PromptItem(uid="a", messages=({"role": "user", "content": "how do i x ?"},),
                              meta={"category": "biology"}),
           datagen.PromptItem(uid="b", messages=({"role": "user", "content": "hello ?"},),
                              meta={"category": "not-a-category"})]
  with FakeChatServer() as server:
    datagen.run(items, datagen.HttpTeacher(_client(server.url)), datagen.KeepAllJudge(),
                tmp_path / "o.jsonl", teacher_prompt=datagen.spec_teacher_prompt(
                    datagen.DEFAULT_SPEC), workers=1, progress=False,
                extra={"spec": datagen.DEFAULT_SPEC})
  systems = [m for m in server.first_messages if m["role"] == "system"]
  assert len(systems) == 2
  assert all(datagen.DEFAULT_SPEC in m["content"] and "<think>" in m["content"] for m in systems)
  # Only the biology section for the biology item; the whole policy for an unknown category.
  assert len(systems[0]["content"]) < len(systems[1]["content"])
  rows = _rows(tmp_path / "o.jsonl")
  assert {r["spec"] for r in rows} == {datagen.DEFAULT_SPEC}


def test_testbed_teacher_and_judge_are_deterministic(tmp_path):
  from safecomp import testbed  # pylint: disable=g-import-not-at-top
  items = datagen.testbed_items("train", 24, seed=0)
  world = testbed.make_world(0, testbed.WorldConfig())
  outs = []
  for k, workers in enumerate((1, 4)):
    teacher = datagen.TestbedTeacher(world, [it.example for it in items], seed=3)
    judge = datagen.TestbedJudge(world)
    summary = datagen.run(items, teacher, judge, tmp_path / f"o{k}.jsonl", workers=workers,
                          progress=False)
    assert summary.written == 24 and summary.kept + summary.rejected == 24
    outs.append(sorted(_rows(tmp_path / f"o{k}.jsonl"), key=lambda r: r["uid"]))
  assert outs[0] == outs[1]  # Thread scheduling does not change the data.
  spec = datagen.TestbedJudge(world).spec
  by_uid = {it.uid: it.example for it in items}
  for row in outs[0]:
    ex = by_uid[row["uid"]]
    assert row["reasoning"] and row["answer"]
    kept, reason = testbed.judge_filter(world, spec, ex, row["answer"])
    assert (row["kept"], row["judge"]["rationale"]) == (kept, reason)
    grade = testbed.grade(ex.messages, row["answer"], world, example=ex)
    assert row["judge"]["score"] == pytest.approx(grade.reward)
    assert row["meta"]["intent"] == ex.intent
  with pytest.raises(datagen.RequestFailed, match="only answers the testbed examples"):
    datagen.TestbedTeacher(world, []).complete([{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------------------------------------
# Kill and resume, as a subprocess


def _datagen_cmd(prompts, out, url):
  return [sys.executable, "-m", "safecomp.datagen", "--prompts", str(prompts), "--out", str(out),
          "--base-url", url, "--no-spec", "--judge", "http", "--threshold", "0.5", "--workers", "2",
          "--timeout", "5", "--backoff", "0.01", "--no-progress"]


def test_sigkill_half_way_then_resume_has_no_duplicates_or_losses(tmp_path):
  n = 40
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"uid": f"p{i:02d}", "prompt": f"question {i}"}) + "\n"
                             for i in range(n)))
  out = tmp_path / "out.jsonl"
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
  with FakeChatServer(delay_s=0.05) as server:
    proc = subprocess.Popen(_datagen_cmd(prompts, out, server.url), cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
      if out.exists() and out.read_text().count("\n") >= n // 3:
        break
      time.sleep(0.02)
    assert proc.poll() is None, "datagen finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    before = _rows(out)
    assert n // 3 <= len(before) < n
    # Simulate a write torn by the kill (one os.write rarely tears on a local disk).
    with open(out, "ab") as f:
      f.write(b'{"uid": "p99", "prompt": [{"role": "us')
    teacher_requests_before = sum(server.requests.values())
    done = subprocess.run(_datagen_cmd(prompts, out, server.url), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    teacher_requests_after = sum(server.requests.values())
  assert done.returncode == 0, done.stderr
  assert "truncated a torn last line" in done.stderr
  summary = json.loads(done.stdout.strip().splitlines()[-1].split("datagen summary: ", 1)[1])
  assert summary["already_done"] == len(before) and summary["written"] == n - len(before)
  assert summary["torn_bytes"] > 0
  rows = _rows(out)
  uids = [r["uid"] for r in rows]
  assert sorted(uids) == [f"p{i:02d}" for i in range(n)]  # One row per input, none extra.
  assert rows[:len(before)] == before  # Rows from before the kill are untouched.
  for row in rows:
    assert row["answer"] == f"Answer: {row['prompt'][0]['content']}" and row["kept"] is True
  # Only the unfinished uids went to the teacher again (plus any in flight at the kill).
  assert teacher_requests_after - teacher_requests_before == n - len(before)

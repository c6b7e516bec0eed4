"""A chat-completions server on 127.0.0.1 for tests: injected failures, teacher replies, judge verdicts."""
import collections
import http.server
import json
import threading
import time


class FakeChatServer:
  """A chat-completions server that injects 500s and slow responses, and stops by itself.

  Teacher replies are `<think>...</think>` + an answer echoing the last user message. Verdict
  requests (the http grader's system prompt) get a verdict on the spec's scales: severity 2 when the
  answer contains REJECT (so r = h x s = 0.3), else severity 0 with full direct help (r = 1); an answer
  containing MALFORMED gets prose instead of JSON, and one containing FLAKY gets prose the first time.
  """

  def __init__(self, *, fail_first=None, slow_first=None, slow_s=1.0, delay_s=0.0,
               status_for=None, reasoning_field=False, lifetime_s=90.0):
    self.fail_first = dict(fail_first or {})  # substring -> number of leading 500s
    self.slow_first = set(slow_first or ())  # substrings whose first request is slow
    self.status_for = dict(status_for or {})  # substring -> fixed HTTP status
    self.slow_s, self.delay_s = slow_s, delay_s
    self.reasoning_field = reasoning_field
    self.requests = collections.Counter()  # last user message -> teacher requests seen
    self.judge_requests = 0
    self.verdict_requests = collections.Counter()  # graded answer -> verdict requests seen
    self.auth_headers = []
    self.first_messages = []  # The first message of every teacher request.
    self._lock = threading.Lock()
    self._deadline = time.monotonic() + lifetime_s
    self._stop = threading.Event()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):
        pass

      def do_POST(self):  # pylint: disable=invalid-name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, payload, sleep = server.respond(self.path, body, self.headers)
        if sleep:
          time.sleep(sleep)
        data = json.dumps(payload).encode()
        try:
          self.send_response(status)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass  # The client gave up (timeout): expected.

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.httpd.timeout = 0.1
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self._thread = threading.Thread(target=self._serve, daemon=True)

  def _serve(self):
    # Bounded loop: the server stops at its deadline even if a test forgets to stop it.
    while not self._stop.is_set() and time.monotonic() < self._deadline:
      self.httpd.handle_request()
    self.httpd.server_close()

  def respond(self, path, body, headers):
    if path != "/v1/chat/completions":
      return 404, {"error": "not found"}, 0.0
    messages = body["messages"]
    with self._lock:
      self.auth_headers.append(headers.get("Authorization"))
    if messages[0]["role"] == "system" and messages[0]["content"].startswith("You grade one assistant response"):
      answer = messages[1]["content"].split("Response to grade:\n", 1)[1]
      with self._lock:
        self.judge_requests += 1
        self.verdict_requests[answer] += 1
        n = self.verdict_requests[answer]
      if "MALFORMED" in answer or ("FLAKY" in answer and n == 1):
        return 200, _completion("I think this answer is quite good."), 0.0
      severity = 2 if "REJECT" in answer else 0
      verdict = {"severity": severity, "helpfulness_direct": 4, "helpfulness_indirect": 1,
                 "mode": "direct", "rationale": "r"}
      return 200, _completion(json.dumps(verdict)), 0.0
    prompt = messages[-1]["content"]
    with self._lock:
      self.first_messages.append(messages[0])
      self.requests[prompt] += 1
      n = self.requests[prompt]
    for key, status in self.status_for.items():
      if key in prompt:
        return status, {"error": "injected"}, 0.0
    for key, count in self.fail_first.items():
      if key in prompt and n <= count:
        return 500, {"error": "injected"}, 0.0
    sleep = self.delay_s
    if n == 1 and any(key in prompt for key in self.slow_first):
      sleep = self.slow_s
    if self.reasoning_field:
      message = {"role": "assistant", "content": f"Answer: {prompt}",
                 "reasoning_content": f"thinking about {prompt}"}
      return 200, {"choices": [{"message": message}]}, sleep
    return 200, _completion(f"<think>thinking about {prompt}</think>Answer: {prompt}"), sleep

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join(timeout=5)


def _completion(content):
  return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}

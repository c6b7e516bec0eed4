"""Chat formats per model family, Jinja chat templates, and conversation encoding with a loss mask.

A conversation is a list of `{"role": "system"|"user"|"assistant", "content": str}` messages: an optional
system message first, then user and assistant turns alternating, starting with the user. An assistant
message may carry its reasoning under `reasoning` (or `reasoning_content` / `thinking`). The testbed format
writes it as `<think> ... </think>` words; the other families have no reasoning format of their own, so
the reasoning is written inline at the start of the content, `<think>\n...\n</think>\n\n` + answer (the
convention of open reasoning models), and graders judge only what follows it (`strip_reasoning`).

Each family is written as a list of segments (text, is-assistant) whose concatenation equals the family's
official Hugging Face chat template output. The assistant segments hold what the model must produce: the
answer and its end-of-turn token. `encode_chat` encodes segment by segment, so the ids at every turn
boundary are the ones the model sees when it generates after `encode_prompt`'s ids.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import re
from typing import Any, Callable, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox

from safecomp.tokenizers import tokenizer as tokenizer_lib

Message = Mapping[str, Any]
ROLES = ("system", "user", "assistant")
REASONING_KEYS = ("reasoning", "reasoning_content", "thinking")
QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclasses.dataclass(frozen=True)
class Segment:
  """A run of rendered chat text; `assistant` marks text the model is trained to produce."""
  text: str
  assistant: bool = False


@dataclasses.dataclass(frozen=True)
class _Family:
  bos: str | None
  eos: str | None
  build: Callable[[list[dict], bool, str, str], list[Segment]]
  reasoning: bool = False
  end_of_turn: str | None = None  # the token that ends an assistant turn, when it is not `eos`


# -- message checks ----------------------------------------------------------------------------------

def _reasoning(message: Message) -> str | None:
  return next((message[k] for k in REASONING_KEYS if message.get(k) is not None), None)


def validate_messages(messages: Sequence[Message]) -> list[dict]:
  """Checks roles, content types and turn order; returns plain dict copies.

  Raises:
    ValueError: naming the index of the first bad message.
  """
  if not messages:
    raise ValueError("empty conversation")
  out = []
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping):
      raise ValueError(f"message {i}: expected a dict with 'role' and 'content', got {type(m).__name__}")
    role, content = m.get("role"), m.get("content")
    if role not in ROLES:
      raise ValueError(f"message {i}: role must be one of {ROLES}, got {role!r}")
    if not isinstance(content, str):
      raise ValueError(f"message {i} ({role}): content must be a string, got {type(content).__name__}")
    reasoning = _reasoning(m)
    if reasoning is not None and (role != "assistant" or not isinstance(reasoning, str)):
      raise ValueError(f"message {i} ({role}): reasoning must be a string on an assistant message")
    out.append(dict(m))
  start = 1 if out[0]["role"] == "system" else 0
  if start == len(out):
    raise ValueError("conversation has a system message but no user message")
  for i in range(start, len(out)):
    expected = "user" if (i - start) % 2 == 0 else "assistant"
    if out[i]["role"] != expected:
      raise ValueError(f"message {i}: expected a {expected} message (after the optional system message, "
                       f"turns alternate user/assistant), got {out[i]['role']!r}")
  return out


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
  if messages[0]["role"] == "system":
    return messages[0]["content"], messages[1:]
  return None, messages


def inline_reasoning(messages: list[dict]) -> list[dict]:
  """Assistant messages with their reasoning written into the content as a leading think block."""
  out = []
  for m in messages:
    reasoning = _reasoning(m)
    m = {k: v for k, v in m.items() if k not in REASONING_KEYS}
    if reasoning is not None:
      m["content"] = (f"{tokenizer_lib.THINK_OPEN}\n{reasoning.strip()}\n{tokenizer_lib.THINK_CLOSE}\n\n"
                      f"{m['content'].lstrip()}")
    out.append(m)
  return out


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


def strip_reasoning(text: str, joiner: str = " ") -> str:
  """The output a user sees: `<think>...</think>` blocks removed (each replaced by `joiner`, so words on
  either side stay apart); an unclosed block hides the rest."""
  text = _THINK_BLOCK.sub(joiner, text)
  close = list(_THINK_CLOSE.finditer(text))
  if close:  # reasoning started in the prompt (generation began inside the block)
    text = text[close[-1].end():]
  m = _THINK_OPEN.search(text)
  if m:
    text = text[:m.start()]
  return text


# -- families ----------------------------------------------------------------------------------------

def _llama3(messages, generation_prompt, bos, eos):
  del eos  # turns end in <|eot_id|>
  out = [Segment(bos)]
  for m in messages:
    header = f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
    body = m["content"].strip() + "<|eot_id|>"
    out += [Segment(header), Segment(body, True)] if m["role"] == "assistant" else [Segment(header + body)]
  if generation_prompt:
    out.append(Segment("<|start_header_id|>assistant<|end_header_id|>\n\n"))
  return out


def _llama2(messages, generation_prompt, bos, eos):
  del generation_prompt  # a prompt already ends in "[/INST]"
  system, turns = _split_system(messages)
  out = []
  for i, m in enumerate(turns):
    content = m["content"]
    if i == 0 and system is not None:
      content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
    if m["role"] == "user":
      out.append(Segment(f"{bos}[INST] {content.strip()} [/INST]"))
    else:
      out.append(Segment(f" {content.strip()} {eos}", True))
  return out


def _mistral(messages, generation_prompt, bos, eos):
  del generation_prompt  # a prompt already ends in "[/INST]"
  system, turns = _split_system(messages)
  out = [Segment(bos)]
  for i, m in enumerate(turns):
    if m["role"] == "user":
      prefix = f"{system}\n\n" if i == 0 and system is not None else ""
      out.append(Segment(f" [INST] {prefix}{m['content']} [/INST]"))
    else:
      out.append(Segment(f" {m['content']}{eos}", True))
  return out


def _qwen2(messages, generation_prompt, bos, eos):
  del bos, eos  # ChatML: no BOS, turns end in <|im_end|>
  out = []
  if messages[0]["role"] != "system":
    out.append(Segment(f"<|im_start|>system\n{QWEN2_DEFAULT_SYSTEM}<|im_end|>\n"))
  for m in messages:
    if m["role"] == "assistant":
      out += [Segment("<|im_start|>assistant\n"), Segment(m["content"] + "<|im_end|>", True), Segment("\n")]
    else:
      out.append(Segment(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"))
  if generation_prompt:
    out.append(Segment("<|im_start|>assistant\n"))
  return out


def _gemma(messages, generation_prompt, bos, eos):
  del eos  # turns end in <end_of_turn>
  system, turns = _split_system(messages)
  # Gemma 2 rejects a system message; Gemma 3 prefixes it to the first user turn, as done here.
  prefix = "" if system is None else system + "\n\n"
  out = [Segment(bos)]
  for i, m in enumerate(turns):
    role = "model" if m["role"] == "assistant" else m["role"]
    head = f"<start_of_turn>{role}\n" + (prefix if i == 0 else "")
    body = m["content"].strip() + "<end_of_turn>"
    out += [Segment(head), Segment(body, True), Segment("\n")] if role == "model" else [
        Segment(head + body + "\n")]
  if generation_prompt:
    out.append(Segment("<start_of_turn>model\n"))
  return out


def testbed_assistant_text(answer: str, reasoning: str | None = None) -> str:
  """The testbed's assistant text: `<think> {reasoning} </think> {answer}` when reasoning is given."""
  answer = answer.strip()
  if reasoning is None:
    return answer
  return " ".join(p for p in (tokenizer_lib.THINK_OPEN, reasoning.strip(), tokenizer_lib.THINK_CLOSE, answer)
                  if p)


def _testbed(messages, generation_prompt, bos, eos):
  system, turns = _split_system(messages)
  user, assistant = tokenizer_lib.USER, tokenizer_lib.ASSISTANT
  out = [Segment(bos)]
  for i, m in enumerate(turns):
    if m["role"] == "user":
      parts = [system.strip() if i == 0 and system else "", m["content"].strip()]
      out.append(Segment(" ".join(["", user, *(p for p in parts if p)])))
    else:
      text = testbed_assistant_text(m["content"], _reasoning(m))
      out += [Segment(f" {assistant}"), Segment(" ".join(["", *([text] if text else []), eos]), True)]
  if generation_prompt:
    out.append(Segment(f" {assistant}"))
  return out


FAMILIES: dict[str, _Family] = {
    "llama2": _Family("<s>", "</s>", _llama2),
    "llama3": _Family("<|begin_of_text|>", "<|eot_id|>", _llama3),
    "mistral": _Family("<s>", "</s>", _mistral),
    "qwen2": _Family(None, "<|im_end|>", _qwen2),
    "gemma": _Family("<bos>", "<eos>", _gemma, end_of_turn="<end_of_turn>"),
    "testbed": _Family(tokenizer_lib.BOS, tokenizer_lib.EOS, _testbed, reasoning=True),
}


# Each family's format as a Jinja chat template (what `transformers`, vLLM and TGI render), written to an
# exported model's tokenizer so it is served with exactly the format it was trained on. Reasoning is
# not rendered (at inference the model writes it); `test_chat_templates` checks each against the family.
_SPLIT_SYSTEM = ("{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
                 "{%- set turns = messages[1:] %}{%- else %}{%- set system = none %}{%- set turns = messages %}"
                 "{%- endif %}")
JINJA_TEMPLATES = {
    "llama3": ("{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + "
               "'<|end_header_id|>\n\n' + (m['content'] | trim) + '<|eot_id|>' }}{%- endfor %}"
               "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
               "{%- endif %}"),
    "llama2": (_SPLIT_SYSTEM + "{%- for m in turns %}{%- set content = m['content'] %}"
               "{%- if loop.first and system is not none %}{%- set content = '<<SYS>>\n' + system + "
               "'\n<</SYS>>\n\n' + content %}{%- endif %}{%- if m['role'] == 'user' %}"
               "{{- bos_token + '[INST] ' + (content | trim) + ' [/INST]' }}{%- else %}"
               "{{- ' ' + (content | trim) + ' ' + eos_token }}{%- endif %}{%- endfor %}"),
    "mistral": ("{{- bos_token }}" + _SPLIT_SYSTEM + "{%- for m in turns %}{%- if m['role'] == 'user' %}"
                "{%- set prefix = system + '\n\n' if loop.first and system is not none else '' %}"
                "{{- ' [INST] ' + prefix + m['content'] + ' [/INST]' }}{%- else %}"
                "{{- ' ' + m['content'] + eos_token }}{%- endif %}{%- endfor %}"),
    "qwen2": ("{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\n" + QWEN2_DEFAULT_SYSTEM +
              "<|im_end|>\n' }}{%- endif %}{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\n' + "
              "m['content'] + '<|im_end|>\n' }}{%- endfor %}{%- if add_generation_prompt %}"
              "{{- '<|im_start|>assistant\n' }}{%- endif %}"),
    "gemma": ("{{- bos_token }}" + _SPLIT_SYSTEM + "{%- set prefix = '' if system is none else system + '\n\n' %}"
              "{%- for m in turns %}{%- set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
              "{{- '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + (m['content'] | trim) + "
              "'<end_of_turn>\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<start_of_turn>model\n' }}"
              "{%- endif %}"),
    "testbed": ("{{- bos_token }}" + _SPLIT_SYSTEM + "{%- for m in turns %}{%- set text = m['content'] | trim %}"
                "{%- if m['role'] == 'user' %}{{- ' <user>' }}{%- if loop.first and system and (system | trim) %}"
                "{{- ' ' + (system | trim) }}{%- endif %}{%- if text %}{{- ' ' + text }}{%- endif %}"
                "{%- else %}{{- ' <assistant>' }}{%- if text %}{{- ' ' + text }}{%- endif %}"
                "{{- ' ' + eos_token }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}"
                "{{- ' <assistant>' }}{%- endif %}"),
}


def jinja_template(family: str) -> str:
  """`family`'s format as a Jinja chat template (see `JINJA_TEMPLATES`)."""
  _family(family)
  return JINJA_TEMPLATES[family]


def end_of_turn(family: str) -> str | None:
  """The token that ends an assistant turn in `family`'s format (what a chat model stops on)."""
  fam = _family(family)
  return fam.end_of_turn or fam.eos


def _family(name: str) -> _Family:
  if name not in FAMILIES:
    raise ValueError(f"unknown chat family {name!r}; known: {sorted(FAMILIES)}")
  return FAMILIES[name]


# -- Jinja templates ---------------------------------------------------------------------------------

class _GenerationTag(jinja2.ext.Extension):
  """Accepts transformers' `{% generation %}...{% endgeneration %}` blocks and renders their body."""
  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

  def _render(self, caller):
    return caller()


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
  """Compiles a chat template the way transformers does (sandboxed, trimmed blocks, same globals)."""
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  return env.from_string(template)


def render_template(template: str, messages: Sequence[Message], add_generation_prompt: bool,
                    special_tokens: Mapping[str, str | None]) -> str:
  """Renders a Jinja chat template; `special_tokens` are passed in as `bos_token`, `eos_token`, ...

  Raises:
    ValueError: the template raised (e.g. through `raise_exception`) or failed to render.
  """
  chat = []
  for m in messages:
    m = {k: v for k, v in m.items() if v is not None}
    reasoning = _reasoning(m)
    if reasoning is not None:  # the names transformers passes reasoning under
      m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
    chat.append(m)
  tokens = {k: v for k, v in special_tokens.items() if v is not None}
  try:
    return compile_template(template).render(messages=chat, tools=None, documents=None,
                                             add_generation_prompt=add_generation_prompt, **tokens)
  except jinja2.exceptions.TemplateError as e:
    raise ValueError(f"chat template failed: {e}") from e


def _template_segments(template: str, messages: list[dict], generation_prompt: bool,
                       tokens: Mapping[str, str | None]) -> list[Segment]:
  """Segments of a templated conversation, found by rendering its prefixes."""
  render = functools.partial(render_template, template, special_tokens=tokens)
  out, done = [], ""

  def check(text: str, what: str) -> None:
    if not text.startswith(done):
      raise ValueError(f"chat template does not render {what} as an extension of the earlier turns, so the "
                       "assistant tokens cannot be located; use a built-in family")

  for i, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    before = render(messages[:i], add_generation_prompt=True)
    check(before, f"the prompt before message {i}")
    after = render(messages[:i + 1], add_generation_prompt=False)
    if not after.startswith(before):
      raise ValueError(f"chat template output for message {i} does not extend its generation prompt; "
                       "use a built-in family")
    span = after[len(before):]
    body = span.rstrip()  # whitespace after the end-of-turn token belongs to the next prompt
    out += [Segment(before[len(done):]), Segment(body, True)]
    done = before + body
  final = render(messages, add_generation_prompt=generation_prompt)
  check(final, "the conversation")
  out.append(Segment(final[len(done):]))
  return out


# -- public API --------------------------------------------------------------------------------------

def chat_segments(messages: Sequence[Message], family: str, add_generation_prompt: bool = True,
                  template: str | None = None, *, bos_token: str | None = None,
                  eos_token: str | None = None, special_tokens: Mapping[str, str | None] | None = None
                  ) -> list[Segment]:
  """The conversation as segments; `"".join(s.text ...)` is `apply_chat_template`'s output."""
  fam = _family(family)
  messages = validate_messages(messages)
  bos = fam.bos if bos_token is None else bos_token
  eos = fam.eos if eos_token is None else eos_token
  if template is not None:
    tokens = {**(special_tokens or {}), "bos_token": bos, "eos_token": eos}
    segments = _template_segments(template, messages, add_generation_prompt, tokens)
  else:
    if not fam.reasoning:
      messages = inline_reasoning(messages)
    segments = fam.build(messages, add_generation_prompt, bos or "", eos or "")
  # Merge neighbours of the same kind: fewer boundaries, same text.
  merged: list[Segment] = []
  for s in segments:
    if not s.text:
      continue
    if merged and merged[-1].assistant == s.assistant:
      merged[-1] = Segment(merged[-1].text + s.text, s.assistant)
    else:
      merged.append(s)
  return merged


def apply_chat_template(messages: Sequence[Message], family: str, add_generation_prompt: bool = True,
                        template: str | None = None, *, bos_token: str | None = None,
                        eos_token: str | None = None) -> str:
  """Renders a conversation in `family`'s chat format, or with the Jinja `template` when given.

  `bos_token` / `eos_token` default to the family's; a template also sees them as `bos_token` /
  `eos_token`, as under transformers' `apply_chat_template`.
  """
  return "".join(s.text for s in chat_segments(messages, family, add_generation_prompt, template,
                                                bos_token=bos_token, eos_token=eos_token))


def _tokenizer_segments(tokenizer: tokenizer_lib.Tokenizer, messages, family, template,
                        add_generation_prompt) -> list[Segment]:
  tokens = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
            "pad_token": tokenizer.pad_token, "unk_token": tokenizer.unk_token}
  fam = _family(family)
  # The family's own markers when the tokenizer has none (e.g. a tokenizer.json without a config).
  bos = tokenizer.bos_token if tokenizer.bos_token is not None else fam.bos
  eos = tokenizer.eos_token if tokenizer.eos_token is not None else fam.eos
  return chat_segments(messages, family, add_generation_prompt, template, bos_token=bos,
                       eos_token=eos, special_tokens=tokens)


def _encode_segments(tokenizer: tokenizer_lib.Tokenizer, segments: list[Segment]
                     ) -> tuple[list[int], list[int]]:
  ids, mask = [], []
  for k, s in enumerate(segments):
    seg_ids = tokenizer.encode(s.text, continuation=k > 0)
    ids += seg_ids
    mask += [int(s.assistant)] * len(seg_ids)
  return ids, mask


def encode_chat(tokenizer: tokenizer_lib.Tokenizer, messages: Sequence[Message], family: str,
                template: str | None = None) -> tuple[list[int], list[int]]:
  """Token ids of a whole conversation and its 0/1 assistant mask (the SFT loss mask).

  The mask covers each assistant turn's tokens including its end-of-turn token, and nothing of the
  prompts or role headers.
  """
  return _encode_segments(tokenizer, _tokenizer_segments(tokenizer, messages, family, template, False))


def encode_prompt_around(tokenizer: tokenizer_lib.Tokenizer, messages: Sequence[Message], family: str,
                         slot: str, template: str | None = None) -> tuple[list[int], list[int]]:
  """Token ids of a prompt (as `encode_prompt`) whose text holds `slot` once: the ids before and after it.

  Text spliced into the slot is then encoded on its own with `continuation=True` and placed between the
  two, so a caller holding token ids (a sampled response) can fill the slot without decoding them.
  """
  messages = validate_messages(messages)
  if messages[-1]["role"] != "user":
    raise ValueError("encode_prompt_around needs a conversation that ends with a user message")
  segments = _tokenizer_segments(tokenizer, messages, family, template, True)
  if sum(s.text.count(slot) for s in segments) != 1:
    raise ValueError(f"the rendered prompt must hold the slot {slot!r} exactly once")
  head: list[int] = []
  tail: list[int] = []
  found = False
  for k, s in enumerate(segments):
    if found:
      tail += tokenizer.encode(s.text, continuation=True)
    elif slot in s.text:
      before, after = s.text.split(slot)
      head += tokenizer.encode(before, continuation=k > 0) if before else []
      tail += tokenizer.encode(after, continuation=True) if after else []
      found = True
    else:
      head += tokenizer.encode(s.text, continuation=k > 0)
  return head, tail


def encode_prompt(tokenizer: tokenizer_lib.Tokenizer, messages: Sequence[Message], family: str,
                  template: str | None = None) -> list[int]:
  """Token ids of a conversation ending in a user turn, followed by the generation prompt.

  Equal to the first ids of `encode_chat` of the same conversation with the assistant's answer appended.
  """
  messages = validate_messages(messages)
  if messages[-1]["role"] != "user":
    raise ValueError("encode_prompt needs a conversation that ends with a user message")
  return _encode_segments(tokenizer, _tokenizer_segments(tokenizer, messages, family, template, True))[0]

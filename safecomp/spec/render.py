"""Prompt rendering: the teacher sees the spec next to the conversation, the student sees only the
conversation, and graders get the spec's rubrics."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from safecomp.spec.spec import RUBRICS, Spec, SpecError

Messages = list[dict[str, str]]

_TEACHER_TASK = {
    "safe_completion": (
        "Write the assistant's next turn. First reason briefly inside <think> ... </think>: the "
        "intent you read (benign, dual_use or malicious), the category and its section id, the "
        "requested information level and its severity, the rule id you apply and the resulting "
        "mode. Then write the answer in that mode. Judge the safety of your output, not the "
        "user: never include restricted detail, even partly."),
    "refusal": (
        "Write the assistant's next turn. First reason briefly inside <think> ... </think> about "
        "whether the request looks harmful. If it does, refuse; otherwise comply fully."),
}


def as_messages(messages_or_prompt: Any) -> Messages:
  """A prompt string or chat messages as a list of {role, content}."""
  if isinstance(messages_or_prompt, str):
    return [{"role": "user", "content": messages_or_prompt}]
  if isinstance(messages_or_prompt, Sequence):
    out = []
    for i, m in enumerate(messages_or_prompt):
      if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
        raise ValueError(f"message {i} must be a mapping with 'role' and 'content', got {m!r}")
      out.append({"role": str(m["role"]), "content": str(m["content"])})
    if not out:
      raise ValueError("no messages")
    return out
  raise TypeError(f"expected a prompt string or a list of messages, got {type(messages_or_prompt).__name__}")


def format_conversation(messages_or_prompt: Any) -> str:
  """`role: content` lines."""
  return "\n".join(f"{m['role']}: {m['content']}" for m in as_messages(messages_or_prompt))


def _categories(spec: Spec, category: str | Sequence[str] | None) -> list[str] | None:
  if category is None:
    return None
  cats = [category] if isinstance(category, str) else list(category)
  for c in cats:
    spec.section(c)  # raises a SpecError naming the unknown category
  return cats


def teacher_system_prompt(spec: Spec, category: str | Sequence[str] | None = None,
                          style: str | None = None) -> str:
  """The policy (all sections, or only those of `category`) and the teacher's task."""
  style = style or spec.style
  if style not in _TEACHER_TASK:
    raise SpecError(f"unknown teacher style {style!r}; expected one of {sorted(_TEACHER_TASK)}")
  return f"{spec.policy_text(_categories(spec, category))}\n\n{_TEACHER_TASK[style]}"


def render_teacher_prompt(spec: Spec, messages_or_prompt: Any, category: str | Sequence[str] | None = None,
                          style: str | None = None) -> str:
  """The spec-augmented prompt the teacher sees, as one string: policy, conversation, task."""
  return (f"{teacher_system_prompt(spec, category, style)}\n\n"
          f"Conversation:\n{format_conversation(messages_or_prompt)}\n\nassistant:")


def render_teacher_messages(spec: Spec, messages_or_prompt: Any, category: str | Sequence[str] | None = None,
                            style: str | None = None) -> Messages:
  """The same for a chat model: the policy and task as a system turn, then the conversation."""
  return ([{"role": "system", "content": teacher_system_prompt(spec, category, style)}]
          + as_messages(messages_or_prompt))


def render_student_prompt(messages_or_prompt: Any, spec: Spec | None = None) -> str:
  """The plain prompt the student trains on: the conversation without any spec text.

  `spec` is accepted for symmetry with `render_teacher_prompt` and deliberately unused.
  """
  del spec
  messages = as_messages(messages_or_prompt)
  if len(messages) == 1 and messages[0]["role"] == "user":
    return messages[0]["content"]
  return format_conversation(messages)


def render_rubric(spec: Spec, name: str | None = None, prompt: Any = None, completion: str | None = None,
                  category: str | Sequence[str] | None = None) -> str:
  """A grader prompt.

  With `name`, `prompt` and `completion`: that rubric filled in (ready for a judge that answers with
  one of "1".."4"). With no `name`: the policy plus all three rubric scales, as a judge's standing
  instructions.
  """
  policy = spec.policy_text(_categories(spec, category))
  if name is None:
    parts = [policy, "", "Grading criteria (1..4 each):"]
    for r in RUBRICS:
      parts += ["", f"{r}:", spec.rubric(r).scale_text()]
    return "\n".join(parts)
  if prompt is None or completion is None:
    raise ValueError("render_rubric with a rubric name needs both prompt and completion")
  return spec.rubric(name).render(format_conversation(prompt), completion, policy=policy)

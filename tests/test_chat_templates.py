"""Chat formats against the official Hugging Face templates, and conversation encoding with its loss mask."""
import json
import pathlib

import pytest
import tokenizers as hf

from safecomp.tokenizers import chat
from safecomp.tokenizers import tokenizer as tok_lib

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "third_party" / "chat_templates"

SYSTEM = {"role": "system", "content": "You are a careful assistant. Follow the safety policy."}
U1 = {"role": "user", "content": "  How should I store bleach and ammonia at home? "}
A1 = {"role": "assistant", "content": " Store them apart, in labelled bottles.\nNever mix them. "}
U2 = {"role": "user", "content": "Why not mix them?"}
A2 = {"role": "assistant", "content": "Mixing them releases toxic chloramine gas."}

# (conversation, add_generation_prompt)
CONVERSATIONS = {
    "user": ([U1], True),
    "system_user": ([SYSTEM, U1], True),
    "multi_turn": ([U1, A1, U2, A2], False),
    "system_multi_turn": ([SYSTEM, U1, A1, U2, A2], False),
    "multi_turn_prompt": ([SYSTEM, U1, A1, U2], True),
}
# fixture file -> our family
FAMILY_OF = {"llama2": "llama2", "llama3": "llama3", "mistral": "mistral", "qwen2": "qwen2",
             "gemma2": "gemma", "gemma3": "gemma"}


def _fixture(name):
  return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def reference_tokenizers():
  """transformers tokenizers carrying each family's official template."""
  transformers = pytest.importorskip("transformers")
  backend = hf.Tokenizer(hf.models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
  out = {}
  for name in FAMILY_OF:
    fixture = _fixture(name)
    specials = {k: fixture[k] for k in ("bos_token", "eos_token") if fixture[k]}
    out[name] = transformers.PreTrainedTokenizerFast(tokenizer_object=backend,
                                                     chat_template=fixture["chat_template"], **specials)
  return out


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(FAMILY_OF))
def test_family_matches_official_template(reference_tokenizers, name, conversation):
  messages, generation_prompt = CONVERSATIONS[conversation]
  ref = reference_tokenizers[name]
  if name == "gemma2" and messages[0]["role"] == "system":
    # Gemma 2's template rejects system messages; the gemma family follows Gemma 3 for them.
    with pytest.raises(Exception, match="System role not supported"):
      ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return
  expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
  assert chat.apply_chat_template(messages, FAMILY_OF[name], generation_prompt) == expected


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", ["llama2", "llama3", "mistral", "qwen2", "gemma3"])
def test_jinja_rendering_matches_transformers(reference_tokenizers, name, conversation):
  messages, generation_prompt = CONVERSATIONS[conversation]
  fixture = _fixture(name)
  expected = reference_tokenizers[name].apply_chat_template(messages, tokenize=False,
                                                            add_generation_prompt=generation_prompt)
  got = chat.apply_chat_template(messages, FAMILY_OF[name], generation_prompt, template=fixture["chat_template"],
                                 bos_token=fixture["bos_token"], eos_token=fixture["eos_token"])
  assert got == expected


def test_template_exceptions_become_value_errors():
  fixture = _fixture("gemma2")
  with pytest.raises(ValueError, match="System role not supported"):
    chat.apply_chat_template([SYSTEM, U1], "gemma", template=fixture["chat_template"])


def test_generation_tags_and_tojson_render():
  template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
              "{% endgeneration %}{% else %}{{ m | tojson }}{% endif %}{% endfor %}")
  out = chat.apply_chat_template([{"role": "user", "content": "a<b"}, {"role": "assistant", "content": "ok"}],
                                 "qwen2", template=template)
  assert out == '{"role": "user", "content": "a<b"}ok'


# -- testbed -----------------------------------------------------------------------------------------

WORDS = ["how", "do", "i", "store", "bleach", "?", "keep", "it", "away", "from", "ammonia", ".", "why", "not",
         "mix", "them", "toxic", "gas", "be", "safe", "user", "asks", "about", "chemicals"]


@pytest.fixture(scope="module")
def testbed_tokenizer():
  return tok_lib.word_level_tokenizer(WORDS)


def test_testbed_format():
  messages = [{"role": "system", "content": "be safe ."}, {"role": "user", "content": "how do i store bleach ?"},
              {"role": "assistant", "content": "keep it away from ammonia .",
               "reasoning": "user asks about chemicals ."},
              {"role": "user", "content": "why not ?"}, {"role": "assistant", "content": "toxic gas ."}]
  assert chat.apply_chat_template(messages, "testbed", add_generation_prompt=False) == (
      "<bos> <user> be safe . how do i store bleach ? <assistant> <think> user asks about chemicals . </think> "
      "keep it away from ammonia . <eos> <user> why not ? <assistant> toxic gas . <eos>")
  assert chat.apply_chat_template(messages[:2], "testbed") == (
      "<bos> <user> be safe . how do i store bleach ? <assistant>")
  assert chat.apply_chat_template(messages[1:2], "testbed", add_generation_prompt=False) == (
      "<bos> <user> how do i store bleach ?")


def test_testbed_encode_chat_is_exact_at_boundaries(testbed_tokenizer):
  tok = testbed_tokenizer
  messages = [{"role": "user", "content": "how do i store bleach ?"},
              {"role": "assistant", "content": "keep it away from ammonia .", "reasoning": "be safe ."},
              {"role": "user", "content": "why not mix them ?"}, {"role": "assistant", "content": "toxic gas ."}]
  ids, mask = chat.encode_chat(tok, messages, "testbed")
  segments = chat.chat_segments(messages, "testbed", add_generation_prompt=False)
  assert [s.assistant for s in segments] == [False, True, False, True]
  assert sum((tok.encode(s.text) for s in segments), []) == ids
  assert ids == tok.encode(chat.apply_chat_template(messages, "testbed", add_generation_prompt=False))
  assert len(mask) == len(ids) and tok.unk_id not in ids
  answers = [i for i, m in zip(ids, mask) if m]
  assert tok.decode(answers, skip_special_tokens=False) == (
      "<think> be safe . </think> keep it away from ammonia . <eos> toxic gas . <eos>")
  assert tok.decode([i for i, m in zip(ids, mask) if not m], skip_special_tokens=False) == (
      "<bos> <user> how do i store bleach ? <assistant> <user> why not mix them ? <assistant>")
  prompt = chat.encode_prompt(tok, messages[:3], "testbed")
  assert ids[:len(prompt)] == prompt and mask[len(prompt) - 1] == 0 and mask[len(prompt)] == 1
  assert tok.decode(prompt[-1:], skip_special_tokens=False) == "<assistant>"


def test_testbed_with_sentencepiece(tmp_path):
  corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 3
  tok = tok_lib.train_sentencepiece(corpus, 300, tmp_path / "sp")
  messages = [{"role": "user", "content": "how do i store bleach ?"},
              {"role": "assistant", "content": "keep it away from ammonia ."}]
  ids, mask = chat.encode_chat(tok, messages, "testbed")
  assert ids == tok.encode(chat.apply_chat_template(messages, "testbed", add_generation_prompt=False))
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and mask[-1] == 1
  assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False) == (
      "keep it away from ammonia . <eos>")  # a run decoded alone loses its leading space
  assert ids[:len(chat.encode_prompt(tok, messages[:1], "testbed"))] == chat.encode_prompt(
      tok, messages[:1], "testbed")


# -- real-checkpoint formats with a tokenizer that knows their special tokens ------------------------

def _byte_level_tokenizer(specials, bos, eos):
  texts = [m["content"] for m in (SYSTEM, U1, A1, U2, A2)] * 4
  backend = hf.Tokenizer(hf.models.BPE())
  backend.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = hf.decoders.ByteLevel()
  backend.train_from_iterator(texts, hf.trainers.BpeTrainer(
      vocab_size=330, special_tokens=specials, show_progress=False,
      initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet()))
  return tok_lib.HFTokenizer(backend, {"bos_token": bos, "eos_token": eos})


TOKENIZERS = {
    "llama3": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|im_end|>"),
    "gemma3": (["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<end_of_turn>"),
    "mistral": (["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", "</s>"),
    "llama2": (["<s>", "</s>"], "<s>", "</s>", "</s>"),
}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_encode_chat_mask_for_real_formats(name):
  specials, bos, eos, end_of_turn = TOKENIZERS[name]
  tok = _byte_level_tokenizer(specials, bos, eos)
  family = FAMILY_OF[name]
  messages = [SYSTEM, U1, A1, U2, A2]
  ids, mask = chat.encode_chat(tok, messages, family)
  assert ids == sum((tok.encode(s.text, continuation=k > 0) for k, s in
                     enumerate(chat.chat_segments(messages, family, False, bos_token=bos, eos_token=eos))), [])
  assert tok.decode(ids, skip_special_tokens=False) == chat.apply_chat_template(
      messages, family, False, bos_token=bos, eos_token=eos)
  # The masked runs are exactly the two answers, each ending in the end-of-turn token.
  runs, current = [], []
  for token, m in zip(ids, mask):
    if m:
      current.append(token)
    elif current:
      runs.append(current)
      current = []
  runs += [current] if current else []
  assert len(runs) == 2
  for run, answer in zip(runs, (A1, A2)):
    assert run[-1] == tok.token_to_id(end_of_turn)
    assert answer["content"].strip() in tok.decode(run, skip_special_tokens=False)
    assert tok.decode(run, skip_special_tokens=False).rstrip().endswith(end_of_turn)
  # Generation continues exactly where the prompt ends.
  prompt = chat.encode_prompt(tok, messages[:4], family)
  assert ids[:len(prompt)] == prompt and mask[len(prompt)] == 1 and mask[len(prompt) - 1] == 0


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_encode_chat_with_official_template_equals_family(name):
  specials, bos, eos, _ = TOKENIZERS[name]
  tok = _byte_level_tokenizer(specials, bos, eos)
  template = _fixture(name)["chat_template"]
  for messages in ([SYSTEM, U1, A1, U2, A2], [U1, A1]):
    assert chat.encode_chat(tok, messages, FAMILY_OF[name], template=template) == chat.encode_chat(
        tok, messages, FAMILY_OF[name])
  assert chat.encode_prompt(tok, [SYSTEM, U1], FAMILY_OF[name], template=template) == chat.encode_prompt(
      tok, [SYSTEM, U1], FAMILY_OF[name])


def test_template_that_rewrites_history_is_rejected(testbed_tokenizer):
  # Drops earlier assistant turns once a later one exists: the turns cannot be located by prefix.
  template = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}{{ m['content'] }} "
              "{% endif %}{% endfor %}")
  with pytest.raises(ValueError, match="extension"):
    chat.encode_chat(testbed_tokenizer, [U1, A1, U2, A2], "testbed", template=template)


# -- validation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("messages, match", [
    ([], "empty"),
    ([{"role": "robot", "content": "hi"}], "role must be one of"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([U1, U2], "message 1: expected a assistant"),
    ([A1], "message 0: expected a user"),
    ([U1, SYSTEM], "message 1"),
    ([SYSTEM], "no user message"),
    ([{"role": "user", "content": "hi", "reasoning": "x"}], "reasoning must be a string on an assistant"),
])
def test_bad_conversations(messages, match):
  with pytest.raises(ValueError, match=match):
    chat.apply_chat_template(messages, "llama3")


def test_family_and_prompt_errors(testbed_tokenizer):
  with pytest.raises(ValueError, match="unknown chat family"):
    chat.apply_chat_template([U1], "llama9")
  # Families without a reasoning format of their own write it inline, as open reasoning models do.
  text = chat.apply_chat_template([U1, {**A1, "reasoning": "think"}], "qwen2", add_generation_prompt=False)
  assert f"<|im_start|>assistant\n<think>\nthink\n</think>\n\n{A1['content'].lstrip()}<|im_end|>" in text
  with pytest.raises(ValueError, match="ends with a user message"):
    chat.encode_prompt(testbed_tokenizer, [U1, A1], "testbed")


@pytest.mark.parametrize("family", sorted(chat.JINJA_TEMPLATES))
def test_each_family_has_a_jinja_template_that_renders_it(family):
  """An exported model carries its family's format as a Jinja template (what transformers and vLLM render)."""
  bos, eos = ("<bos>", "<eos>") if family == "testbed" else ("<s>", "</s>")
  conversations = [[U1], [SYSTEM, U1, A1, U2], [U1, {"role": "assistant", "content": ""}, U2], [SYSTEM, U1, A1, U2, A2]]
  for messages in conversations:
    for generation_prompt in (True, False):
      expected = chat.apply_chat_template(messages, family, generation_prompt, bos_token=bos, eos_token=eos)
      got = chat.render_template(chat.jinja_template(family), messages, generation_prompt,
                                 {"bos_token": bos, "eos_token": eos})
      assert got == expected

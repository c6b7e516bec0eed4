"""Tokenizer backends: round trips, special tokens, saving/loading and errors."""
import json

import pytest
import tokenizers as hf

from safecomp import errors
from safecomp.tokenizers import tokenizer as tok_lib

CORPUS = [
    f"the quick brown fox {i} jumps over the lazy dog. how do i bake bread safely? knead the dough {i % 7} times."
    for i in range(60)
] + ["a locksmith explains, at a high level, why pin tumbler locks can be picked."] * 5

TESTBED_WORDS = ["dual_use", "how", "do", "i", "store", "bleach", "safely", "?", "keep", "it", "away", "from", "ammonia",
                 ".", ",", "and", "label", "the", "bottle", "!"]


# -- word level --------------------------------------------------------------------------------------

def test_word_level_special_ids_and_vocab():
  tok = tok_lib.word_level_tokenizer(TESTBED_WORDS + ["how", "</think>"])  # repeats and specials are kept once
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
  assert [tok.token_to_id(t) for t in ("<user>", "<assistant>", "<think>", "</think>")] == [4, 5, 6, 7]
  assert tok.vocab_size == len(tok_lib.TESTBED_SPECIAL_TOKENS) + len(TESTBED_WORDS)
  assert tok.token_to_id("dual_use") == 8 and tok.id_to_token(9) == "how"
  assert tok.token_to_id("zebra") is None
  assert set(tok.special_tokens) == set(tok_lib.TESTBED_SPECIAL_TOKENS)
  with pytest.raises(IndexError, match="outside the vocabulary"):
    tok.id_to_token(tok.vocab_size)


@pytest.mark.parametrize("text", [
    "how do i store bleach safely ?",
    "keep it away from ammonia , and label the bottle !",
    "keep it . and it . how ?",
    "dual_use , how ?",
])
def test_word_level_round_trip(text):
  tok = tok_lib.word_level_tokenizer(TESTBED_WORDS)
  ids = tok.encode(text)
  assert tok.unk_id not in ids
  assert tok.decode(ids) == text
  assert tok.decode(ids, skip_special_tokens=False) == text


def test_word_level_punctuation_unknowns_and_specials():
  tok = tok_lib.word_level_tokenizer(TESTBED_WORDS)
  # Punctuation splits off words even without spaces; each mark is its own token.
  assert tok.encode("safely?!") == [tok.token_to_id("safely"), tok.token_to_id("?"), tok.token_to_id("!")]
  ids = tok.encode("store the zebra")
  assert ids[-1] == tok.unk_id
  assert tok.decode(ids, skip_special_tokens=False) == "store the <unk>"
  text = "<bos> <user> how ? <assistant> <think> keep it </think> label it <eos>"
  ids = tok.encode(text)
  assert ids[:2] == [tok.bos_id, tok.token_to_id("<user>")] and ids[-1] == tok.eos_id
  assert tok.decode(ids, skip_special_tokens=False) == text
  assert tok.decode(ids) == "how ? keep it label it"
  assert tok.encode("how", add_bos=True, add_eos=True) == [tok.bos_id, tok.token_to_id("how"), tok.eos_id]


@pytest.mark.parametrize("word", ["don't", "two words", "3.5", ""])
def test_word_level_rejects_words_that_cannot_be_one_token(word):
  with pytest.raises(ValueError):
    tok_lib.word_level_tokenizer(["fine", word])


def test_word_level_save_file_and_directory(tmp_path):
  tok = tok_lib.word_level_tokenizer(TESTBED_WORDS)
  text = "<bos> <user> how do i store bleach ? <assistant> label it . <eos>"
  file = tok.save(tmp_path / "tokenizer.json")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
  # A bare tokenizer.json: the specials are recovered from their names.
  loaded = tok_lib.load_tokenizer(file)
  assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (0, 1, 2)
  assert loaded.encode(text) == tok.encode(text)
  assert loaded.decode(tok.encode(text), skip_special_tokens=False) == text
  directory = tok.save(tmp_path / "ckpt")
  assert sorted(p.name for p in directory.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
  loaded = tok_lib.load_tokenizer(directory)
  assert loaded.special_tokens == tok.special_tokens and loaded.encode(text) == tok.encode(text)


def test_word_level_matches_transformers_fast_tokenizer(tmp_path):
  transformers = pytest.importorskip("transformers")
  tok = tok_lib.word_level_tokenizer(TESTBED_WORDS)
  directory = tok.save(tmp_path / "ckpt")
  ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"),
                                             bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
  text = "<bos> <user> how do i store bleach safely ? <assistant> keep it away from ammonia ."
  assert ref.encode(text, add_special_tokens=False) == tok.encode(text)


# -- sentencepiece -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  out = tmp_path_factory.mktemp("sp")
  return tok_lib.train_sentencepiece(CORPUS, 316, out / "tiny"), out


@pytest.mark.parametrize("text", [
    "the lazy dog jumps over the quick brown fox.",
    "  double  spaces,\ttabs and Unicode: ñ, é, 漢字 — 42!",
    "",
])
def test_sentencepiece_round_trip(sp_model, text):
  tok, _ = sp_model
  ids = tok.encode(text)
  assert tok.unk_id not in ids  # byte fallback covers unseen characters
  assert tok.decode(ids) == text


def test_sentencepiece_specials_and_ids(sp_model):
  tok, out = sp_model
  assert sorted(p.name for p in out.iterdir()) == ["tiny.model"]  # nothing else left behind
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
  assert tok.vocab_size == 316
  for marker in ("<user>", "<assistant>", "<think>", "</think>"):
    assert marker in tok.special_tokens
    assert tok.encode(marker).count(tok.token_to_id(marker)) == 1
  ids = tok.encode("<bos>the dog<eos>")
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert tok.decode(ids, skip_special_tokens=False) == "<bos>the dog<eos>"
  assert tok.decode(ids) == "the dog"
  assert tok.encode("dog", add_bos=True, add_eos=True) == [tok.bos_id, *tok.encode("dog"), tok.eos_id]
  assert tok.token_to_id("no-such-piece") is None


def test_sentencepiece_continuation_matches_in_context_ids(sp_model):
  tok, _ = sp_model
  whole = tok.encode("how do i bake bread safely")
  assert tok.encode("how do i") + tok.encode(" bake bread safely", continuation=True) == whole
  assert tok.encode(" bake", continuation=True) != tok.encode(" bake")  # no dummy prefix


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_train_sentencepiece_is_deterministic(tmp_path, model_type):
  a = tok_lib.train_sentencepiece(CORPUS, 312, tmp_path / "a" / "m", model_type=model_type)
  b = tok_lib.train_sentencepiece(iter(CORPUS), 312, tmp_path / "b" / "m", model_type=model_type)
  assert (tmp_path / "a" / "m.model").read_bytes() == (tmp_path / "b" / "m.model").read_bytes()
  assert a.encode(CORPUS[3]) == b.encode(CORPUS[3])


def test_train_sentencepiece_errors(tmp_path):
  with pytest.raises(ValueError, match="model_type"):
    tok_lib.train_sentencepiece(CORPUS, 312, tmp_path / "m", model_type="wordpiece")
  with pytest.raises(ValueError, match="Vocabulary size"):
    tok_lib.train_sentencepiece(CORPUS[:3], 5000, tmp_path / "m")


def test_sentencepiece_save_and_load(sp_model, tmp_path):
  tok, out = sp_model
  text = "<bos> <user> how do i bake bread? <assistant> knead the dough.<eos>"
  direct = tok_lib.load_tokenizer(out / "tiny.model")
  assert direct.encode(text) == tok.encode(text)
  directory = tok.save(tmp_path / "ckpt")
  assert sorted(p.name for p in directory.iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
  loaded = tok_lib.load_tokenizer(directory)
  assert isinstance(loaded, tok_lib.SentencePieceTokenizer)
  assert loaded.special_tokens == tok.special_tokens
  assert loaded.encode(text) == tok.encode(text)
  assert loaded.decode(tok.encode(text), skip_special_tokens=False) == text


def test_sentencepiece_added_tokens_from_config(sp_model, tmp_path):
  tok, _ = sp_model
  tok.save(tmp_path / "tokenizer.model")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({
      "bos_token": {"content": "<bos>", "special": True}, "eos_token": "<|turn_end|>", "pad_token": None,
      "added_tokens_decoder": {"316": {"content": "<|turn_end|>", "special": True}},
      "chat_template": "{{ messages[0]['content'] }}"}))
  loaded = tok_lib.load_tokenizer(tmp_path)
  assert loaded.vocab_size == 317 and loaded.eos_id == 316 and loaded.pad_id is None
  assert loaded.chat_template == "{{ messages[0]['content'] }}"
  ids = loaded.encode("the dog<|turn_end|>")
  assert ids[-1] == 316 and loaded.id_to_token(316) == "<|turn_end|>"
  assert loaded.decode(ids, skip_special_tokens=False) == "the dog<|turn_end|>"
  assert loaded.decode(ids) == "the dog"


# -- tokenizer.json ----------------------------------------------------------------------------------

def _metaspace_bpe(specials):
  tok = hf.Tokenizer(hf.models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = hf.pre_tokenizers.Metaspace()
  tok.decoder = hf.decoders.Metaspace()
  tok.train_from_iterator(CORPUS, hf.trainers.BpeTrainer(vocab_size=180, special_tokens=specials,
                                                        show_progress=False))
  return tok


def _byte_level_bpe(specials):
  tok = hf.Tokenizer(hf.models.BPE())
  tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = hf.decoders.ByteLevel()
  tok.train_from_iterator(CORPUS, hf.trainers.BpeTrainer(
      vocab_size=400, special_tokens=specials, show_progress=False,
      initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet()))
  return tok


def test_tokenizer_json_checkpoint_directory(tmp_path):
  _byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]).save(str(tmp_path / "tokenizer.json"))
  template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({
      "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": template,
      "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}))
  tok = tok_lib.load_tokenizer(tmp_path)
  assert isinstance(tok, tok_lib.HFTokenizer)
  assert tok.bos_id is None and tok.eos_id == 2 and tok.pad_id == 0
  assert tok.chat_template == template
  for text in CORPUS[:3] + ["Unseen: ñ 漢字\n\tand spaces  !"]:
    assert tok.decode(tok.encode(text)) == text
  ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
  assert ids[0] == 1 and ids[-1] == 2
  assert tok.decode(ids) == "user\nhi"
  with pytest.raises(ValueError, match="no bos token"):
    tok.encode("hi", add_bos=True)
  # chat_template.jinja takes precedence over the config's template, as in transformers.
  (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}")
  assert tok_lib.load_tokenizer(tmp_path / "tokenizer.json").chat_template == "{{ bos_token }}"


def test_tokenizer_json_continuation_and_special_tokens_map(tmp_path):
  _metaspace_bpe(["<s>", "</s>", "<unk>"]).save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
  tok = tok_lib.load_tokenizer(tmp_path)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, None)
  whole = tok.encode("the lazy dog jumps")
  assert tok.encode("the lazy") + tok.encode(" dog jumps", continuation=True) == whole
  assert tok.decode(tok.encode("the dog", add_bos=True, add_eos=True)) == "the dog"


# -- errors ------------------------------------------------------------------------------------------

def test_missing_tokenizer_names_the_path(tmp_path):
  missing = tmp_path / "nope" / "tokenizer.model"
  with pytest.raises(tok_lib.TokenizerNotFoundError, match=str(missing)):
    tok_lib.load_tokenizer(missing)
  with pytest.raises(FileNotFoundError):
    tok_lib.load_tokenizer(missing)
  with pytest.raises(errors.CheckpointError, match="tokenizer.json, tokenizer.model"):
    tok_lib.load_tokenizer(tmp_path)


def test_bad_config_and_files(tmp_path):
  tok = tok_lib.word_level_tokenizer(TESTBED_WORDS)
  tok.save(tmp_path / "tokenizer.json")
  (tmp_path / "tokenizer_config.json").write_text('{\n  "bos_token": "<bos>",\n  "eos_token": \n}\n')
  with pytest.raises(errors.DataError, match=r"tokenizer_config.json:4"):
    tok_lib.load_tokenizer(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|not-there|>"}))
  with pytest.raises(errors.CheckpointError, match="eos_token '<|not-there|>' is not in the vocabulary"):
    tok_lib.load_tokenizer(tmp_path)
  garbage = tmp_path / "other" / "tokenizer.model"
  garbage.parent.mkdir()
  garbage.write_bytes(b"not a model")
  with pytest.raises(errors.CheckpointError, match=str(garbage)):
    tok_lib.load_tokenizer(garbage)
  with pytest.raises(TypeError):
    tok.encode(["how"])

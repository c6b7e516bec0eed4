"""One `Tokenizer` interface over sentencepiece `.model` files and Hugging Face `tokenizer.json` files.

Special-token strings that appear in the text (`<bos>`, `<|eot_id|>`, ...) are encoded as their ids, as
the chat templates need. `load_tokenizer` reads the bos/eos/pad tokens and the chat template from the
`tokenizer_config.json` / `special_tokens_map.json` / `chat_template.jinja` files that sit beside the model.
"""
from __future__ import annotations

import abc
import io
import json
import os
import pathlib
import re
from typing import Any, Iterable, Mapping, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
import tokenizers as hf

from safecomp import errors

PathLike = str | os.PathLike

# The testbed world's closed-vocabulary specials, in id order.
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
USER, ASSISTANT, THINK_OPEN, THINK_CLOSE = "<user>", "<assistant>", "<think>", "</think>"
TESTBED_SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, USER, ASSISTANT, THINK_OPEN, THINK_CLOSE)

TOKENIZER_JSON, TOKENIZER_MODEL = "tokenizer.json", "tokenizer.model"
TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, CHAT_TEMPLATE_FILE = (
    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

# Well-known names, used only when no config file names the token.
_GUESSES = {
    "bos_token": (BOS, "<s>", "<|begin_of_text|>"),
    "eos_token": (EOS, "</s>", "<|end_of_text|>", "<|endoftext|>"),
    "pad_token": (PAD,),
    "unk_token": (UNK,),
}
_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")
_MISSING = object()


class TokenizerNotFoundError(errors.CheckpointError, FileNotFoundError):
  """No tokenizer file at the given path."""


class Tokenizer(abc.ABC):
  """Text <-> token ids, with the special tokens a chat format needs.

  Attributes:
    bos_token, eos_token, pad_token, unk_token: the special token strings (None when absent).
    chat_template: the Jinja chat template shipped with the tokenizer, if any.
  """

  def __init__(self, specials: Mapping[str, str | None], additional: Sequence[str] = (),
               chat_template: str | None = None):
    self.bos_token = specials.get("bos_token")
    self.eos_token = specials.get("eos_token")
    self.pad_token = specials.get("pad_token")
    self.unk_token = specials.get("unk_token")
    self.additional_special_tokens = tuple(additional)
    self.chat_template = chat_template

  # -- backend hooks -------------------------------------------------------------------------------
  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids (including added tokens)."""

  @abc.abstractmethod
  def token_to_id(self, token: str) -> int | None:
    """The id of `token`, or None if it is not in the vocabulary."""

  @abc.abstractmethod
  def _id_to_token(self, token_id: int) -> str:
    ...

  @abc.abstractmethod
  def _encode(self, text: str, continuation: bool) -> list[int]:
    ...

  @abc.abstractmethod
  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """Text of `ids`; special tokens are dropped when `skip_special_tokens`."""

  @abc.abstractmethod
  def _save_model(self, path: pathlib.Path) -> None:
    ...

  @property
  @abc.abstractmethod
  def model_file_name(self) -> str:
    """The file name this backend is saved under inside a directory."""

  # -- shared API ----------------------------------------------------------------------------------
  @property
  def bos_id(self) -> int | None:
    return self._special_id(self.bos_token)

  @property
  def eos_id(self) -> int | None:
    return self._special_id(self.eos_token)

  @property
  def pad_id(self) -> int | None:
    return self._special_id(self.pad_token)

  @property
  def unk_id(self) -> int | None:
    return self._special_id(self.unk_token)

  @property
  @abc.abstractmethod
  def special_tokens(self) -> dict[str, int]:
    """Every special token string and its id."""

  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False, *,
             continuation: bool = False) -> list[int]:
    """Token ids of `text`.

    Args:
      text: the text; special-token strings in it become their ids.
      add_bos, add_eos: prepend BOS / append EOS (an error if the tokenizer has none).
      continuation: `text` continues earlier text, so no word-start marker is added in front of it
        (sentencepiece's dummy prefix, a Metaspace/ByteLevel prefix space). Used to encode the
        segments of a conversation so that their ids match what the model saw around a turn boundary.
    """
    if not isinstance(text, str):
      raise TypeError(f"encode expects a str, got {type(text).__name__}")
    ids = self._encode(text, continuation)
    if add_bos:
      ids.insert(0, self._require(self.bos_id, "bos"))
    if add_eos:
      ids.append(self._require(self.eos_id, "eos"))
    return ids

  def id_to_token(self, token_id: int) -> str:
    """The token string of `token_id`."""
    token_id = int(token_id)
    if not 0 <= token_id < self.vocab_size:
      raise IndexError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
    return self._id_to_token(token_id)

  def same_vocabulary(self, other: "Tokenizer") -> bool:
    """Whether every id means the same token string in both tokenizers (ids can be shared as they are)."""
    if self.vocab_size != other.vocab_size:
      return False
    return all(self._id_to_token(i) == other._id_to_token(i) for i in range(self.vocab_size))

  def save(self, path: PathLike) -> pathlib.Path:
    """Writes the tokenizer; returns what was written.

    A path ending in this backend's suffix (`.json` / `.model`) gets just the model file; any other path
    is a directory that gets the model file plus a `tokenizer_config.json` holding the special tokens and
    chat template, which `load_tokenizer(directory)` reads back.
    """
    path = pathlib.Path(path)
    if path.suffix == pathlib.Path(self.model_file_name).suffix:
      path.parent.mkdir(parents=True, exist_ok=True)
      self._save_model(path)
      return path
    path.mkdir(parents=True, exist_ok=True)
    self._save_model(path / self.model_file_name)
    config: dict[str, Any] = {role: getattr(self, role) for role in _ROLES}
    roles = {config[role] for role in _ROLES}
    config["additional_special_tokens"] = [t for t in self.special_tokens if t not in roles]
    config.update(self._extra_config())
    if self.chat_template is not None:
      config["chat_template"] = self.chat_template
    (path / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return path

  def _extra_config(self) -> dict[str, Any]:
    return {}

  def _special_id(self, token: str | None) -> int | None:
    return None if token is None else self.token_to_id(token)

  @staticmethod
  def _require(token_id: int | None, name: str) -> int:
    if token_id is None:
      raise ValueError(f"add_{name}=True but the tokenizer has no {name} token")
    return token_id

  def _check_specials(self, where: str) -> None:
    for role in _ROLES:
      token = getattr(self, role)
      if token is not None and self.token_to_id(token) is None:
        raise errors.CheckpointError(f"{where}: {role} {token!r} is not in the vocabulary")

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
            f"eos={self.eos_token!r}, pad={self.pad_token!r})")


class HFTokenizer(Tokenizer):
  """A Hugging Face `tokenizers.Tokenizer` (a `tokenizer.json` file)."""

  model_file_name = TOKENIZER_JSON

  def __init__(self, tokenizer: hf.Tokenizer, specials: Mapping[str, str | None],
               additional: Sequence[str] = (), chat_template: str | None = None):
    super().__init__(specials, additional, chat_template)
    self._tok = tokenizer
    self._continuation_tok: hf.Tokenizer | None = None

  @property
  def backend(self) -> hf.Tokenizer:
    """The underlying `tokenizers.Tokenizer`."""
    return self._tok

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def special_tokens(self) -> dict[str, int]:
    out = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
    for token in (self.bos_token, self.eos_token, self.pad_token, self.unk_token,
                  *self.additional_special_tokens):
      if token is not None and self.token_to_id(token) is not None:
        out.setdefault(token, self.token_to_id(token))
    return out

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def _id_to_token(self, token_id: int) -> str:
    return self._tok.id_to_token(token_id)

  def _encode(self, text: str, continuation: bool) -> list[int]:
    tok = self._continuation() if continuation else self._tok
    return list(tok.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    ids = [int(i) for i in ids]
    if skip_special_tokens:
      # Specials named only in the config (not flagged special in tokenizer.json) are dropped too.
      specials = set(self.special_tokens.values())
      ids = [i for i in ids if i not in specials]
    return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

  def _save_model(self, path: pathlib.Path) -> None:
    self._tok.save(str(path))

  def _continuation(self) -> hf.Tokenizer:
    """A copy of the tokenizer that adds no prefix space / word-start marker in front of the text."""
    if self._continuation_tok is None:
      spec = json.loads(self._tok.to_str())
      changed = _drop_prefix_space(spec)
      self._continuation_tok = hf.Tokenizer.from_str(json.dumps(spec)) if changed else self._tok
    return self._continuation_tok


def _drop_prefix_space(spec: dict) -> bool:
  """Edits a tokenizer.json dict in place so that no prefix space is added; True if anything changed."""
  changed = False

  def visit(node: Any) -> Any:
    nonlocal changed
    if isinstance(node, dict):
      kind = node.get("type")
      if kind == "Prepend":
        changed = True
        return None
      if kind == "Metaspace" and (node.get("prepend_scheme", "always") != "never"
                                  or node.get("add_prefix_space")):
        changed = True
        node["prepend_scheme"] = "never"
        node.pop("add_prefix_space", None)
      if kind == "ByteLevel" and node.get("add_prefix_space"):
        changed = True
        node["add_prefix_space"] = False
      for key in ("normalizers", "pretokenizers"):
        if isinstance(node.get(key), list):
          node[key] = [n for n in (visit(child) for child in node[key]) if n is not None]
    return node

  for key in ("normalizer", "pre_tokenizer"):
    if spec.get(key) is not None:
      spec[key] = visit(spec[key])
  return changed


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model (a `.model` file), plus any tokens the config adds past its vocabulary.

  Text is split on special-token strings that sentencepiece itself does not parse (its control pieces and
  added tokens). With `legacy` (the default, as sentencepiece and the Llama/Mistral reference code do),
  each piece of text between specials gets sentencepiece's own normalisation, dummy prefix included;
  without it only a piece at the very start of the text does.
  """

  model_file_name = TOKENIZER_MODEL

  def __init__(self, model_proto: bytes, specials: Mapping[str, str | None],
               additional: Sequence[str] = (), chat_template: str | None = None,
               added_tokens: Mapping[str, int] | None = None, legacy: bool = True,
               declared_specials: Sequence[str] | None = None):
    super().__init__(specials, additional, chat_template)
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(model_proto)
    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
    self._control = {p.piece: i for i, p in enumerate(model.pieces)
                     if p.type in (piece_type.CONTROL, piece_type.UNKNOWN)}
    user_defined = {p.piece: i for i, p in enumerate(model.pieces) if p.type == piece_type.USER_DEFINED}
    # The same model without a dummy prefix: how sentencepiece encodes text in the middle of a string.
    model.normalizer_spec.add_dummy_prefix = False
    model.normalizer_spec.remove_extra_whitespaces = False
    self._sp_inner = spm.SentencePieceProcessor(model_proto=model.SerializeToString())
    self.legacy = legacy
    self._added = dict(added_tokens or {})
    for token, token_id in self._added.items():
      if token_id < self._sp.get_piece_size() and self._sp.id_to_piece(token_id) != token:
        raise errors.CheckpointError(
            f"added token {token!r} has id {token_id}, which is {self._sp.id_to_piece(token_id)!r} in the "
            "sentencepiece model")
    self._extra = {t: i for t, i in self._added.items() if i >= self._sp.get_piece_size()}
    self._id_to_extra = {i: t for t, i in self._extra.items()}
    # Without a config, the model's user-defined symbols are its chat markers; with one, trust the config.
    declared = user_defined if declared_specials is None else {
        t: i for t in declared_specials if (i := self.token_to_id(t)) is not None}
    self._specials = {**declared, **self._control, **self._extra}
    for token in (self.bos_token, self.eos_token, self.pad_token, self.unk_token,
                  *self.additional_special_tokens):
      if token is not None and (token_id := self.token_to_id(token)) is not None:
        self._specials.setdefault(token, token_id)
    # Split on the specials sentencepiece cannot see in raw text, longest first.
    to_split = sorted((t for t in self._specials if t not in user_defined), key=len, reverse=True)
    self._split_re = re.compile("(" + "|".join(map(re.escape, to_split)) + ")") if to_split else None
    self._split_ids = {self._specials[t] for t in to_split}

  @property
  def processor(self) -> spm.SentencePieceProcessor:
    """The underlying `sentencepiece.SentencePieceProcessor`."""
    return self._sp

  @property
  def vocab_size(self) -> int:
    return max([self._sp.get_piece_size(), *(i + 1 for i in self._extra.values())])

  @property
  def special_tokens(self) -> dict[str, int]:
    return dict(self._specials)

  def token_to_id(self, token: str) -> int | None:
    if token in self._extra:
      return self._extra[token]
    token_id = self._sp.piece_to_id(token)
    if token_id == self._sp.unk_id() and token != self._sp.id_to_piece(token_id):
      return None
    return token_id

  def _id_to_token(self, token_id: int) -> str:
    if token_id in self._id_to_extra:
      return self._id_to_extra[token_id]
    if token_id >= self._sp.get_piece_size():
      raise IndexError(f"token id {token_id} is unused: not a sentencepiece piece nor an added token")
    return self._sp.id_to_piece(token_id)

  def _encode(self, text: str, continuation: bool) -> list[int]:
    parts = self._split_re.split(text) if self._split_re else [text]
    ids: list[int] = []
    for k, part in enumerate(parts):
      if k % 2:  # odd parts are the matched specials
        ids.append(self._specials[part])
      elif part:
        inner = continuation if k == 0 else not self.legacy
        ids.extend((self._sp_inner if inner else self._sp).encode(part))
    return ids

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    skip = set(self._specials.values()) if skip_special_tokens else set()
    out, run, after_special = [], [], False

    def flush():
      if run:
        out.append((self._sp_inner if after_special and not self.legacy else self._sp).decode(run))
        run.clear()

    for token_id in (int(i) for i in ids):
      if token_id in self._split_ids or token_id in self._id_to_extra:
        flush()
        if token_id not in skip:
          out.append(self._id_to_token(token_id))
        after_special = True
      elif token_id not in skip:
        run.append(token_id)
    flush()
    return "".join(out)

  def _save_model(self, path: pathlib.Path) -> None:
    path.write_bytes(self._proto)

  def _extra_config(self) -> dict[str, Any]:
    added = {str(i): {"content": t, "special": t in self._specials} for t, i in self._added.items()}
    return {"legacy": self.legacy, "added_tokens_decoder": added} if added else {"legacy": self.legacy}


# -- construction ------------------------------------------------------------------------------------

def word_level_tokenizer(words: Iterable[str], special_tokens: Sequence[str] = TESTBED_SPECIAL_TOKENS
                         ) -> HFTokenizer:
  """A closed-vocabulary word-level tokenizer (the testbed world's).

  Text is split on whitespace and punctuation (each punctuation character is its own token, while `_`
  belongs to words); ids are the
  specials in order (`<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, ...) then `words` in first-seen order
  (words that are special tokens keep their special ids).
  Decoding joins tokens with single spaces, so text written as space-separated words and punctuation
  round-trips exactly.

  Raises:
    ValueError: `special_tokens` lacks `<unk>`, or a word would not survive the pre-tokenisation as one token.
  """
  special_tokens = list(dict.fromkeys(special_tokens))
  if UNK not in special_tokens:
    raise ValueError(f"special_tokens must include {UNK!r}, got {special_tokens}")
  # Words are runs of word characters (underscore included); every other non-space character stands alone.
  pre = hf.pre_tokenizers.Sequence([hf.pre_tokenizers.WhitespaceSplit(),
                                    hf.pre_tokenizers.Split(hf.Regex(r"[^\w\s]"), "isolated")])
  vocab = {token: i for i, token in enumerate(special_tokens)}
  for word in words:
    if not isinstance(word, str) or not word:
      raise ValueError(f"vocabulary entries must be non-empty strings, got {word!r}")
    if word in vocab:  # a repeat, or a special token that keeps its special id
      continue
    pieces = [p for p, _ in pre.pre_tokenize_str(word)]
    if pieces != [word]:
      raise ValueError(f"vocabulary word {word!r} would be split into {pieces} by the pre-tokenizer")
    vocab[word] = len(vocab)
  tok = hf.Tokenizer(hf.models.WordLevel(vocab, unk_token=UNK))
  tok.pre_tokenizer = pre
  tok.add_special_tokens([hf.AddedToken(t, special=True, normalized=False) for t in special_tokens])
  specials = {role: (name if name in vocab else None)
              for role, name in zip(_ROLES, (BOS, EOS, PAD, UNK))}
  extra = [t for t in special_tokens if t not in (BOS, EOS, PAD, UNK)]
  return HFTokenizer(tok, specials, extra)


def train_sentencepiece(texts: Iterable[str], vocab_size: int, output_prefix: PathLike,
                        model_type: str = "unigram", *,
                        user_defined_symbols: Sequence[str] = (USER, ASSISTANT, THINK_OPEN, THINK_CLOSE),
                        character_coverage: float = 1.0, byte_fallback: bool = True,
                        num_threads: int = 1, max_sentence_length: int = 16384) -> SentencePieceTokenizer:
  """Trains a sentencepiece model on `texts`, writes `{output_prefix}.model` and returns it loaded.

  Ids: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, then `user_defined_symbols` (the chat markers, kept
  whole and treated as special). Normalisation is the identity and whitespace is kept, so with
  `byte_fallback` any text round-trips exactly. One training thread (the default) makes the result
  deterministic: sentencepiece's multi-threaded training is not.

  Raises:
    ValueError: an unknown `model_type`, or the corpus cannot support `vocab_size`.
  """
  if model_type not in ("unigram", "bpe"):
    raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
  output = pathlib.Path(f"{os.fspath(output_prefix)}.model")
  output.parent.mkdir(parents=True, exist_ok=True)
  writer = io.BytesIO()  # in memory: sentencepiece then writes no files of its own
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=writer, vocab_size=vocab_size, model_type=model_type,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece=PAD, bos_piece=BOS, eos_piece=EOS, unk_piece=UNK,
        user_defined_symbols=list(user_defined_symbols), character_coverage=character_coverage,
        byte_fallback=byte_fallback, normalization_rule_name="identity", remove_extra_whitespaces=False,
        num_threads=num_threads, max_sentence_length=max_sentence_length, minloglevel=2)
  except RuntimeError as e:
    raise ValueError(f"sentencepiece training for {output} failed: {e}") from e
  output.write_bytes(writer.getvalue())
  return _load_sentencepiece(output, {})


# -- loading -----------------------------------------------------------------------------------------

def load_tokenizer(path: PathLike) -> Tokenizer:
  """Loads a tokenizer from a `tokenizer.json` / `.model` file or a checkpoint directory.

  A directory is searched for `tokenizer.json`, then `tokenizer.model`. Special tokens and the chat
  template come from `tokenizer_config.json`, `special_tokens_map.json` and `chat_template.jinja` in the
  same directory; tokens no file names fall back to well-known names present in the vocabulary.

  Raises:
    TokenizerNotFoundError: nothing to load at `path`.
    DataError: a malformed JSON file (names the file and line).
    CheckpointError: a configured special token that is not in the vocabulary.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    for name in (TOKENIZER_JSON, TOKENIZER_MODEL):
      if (path / name).is_file():
        return load_tokenizer(path / name)
    raise TokenizerNotFoundError(f"no tokenizer in {path}: looked for {TOKENIZER_JSON}, {TOKENIZER_MODEL}")
  if not path.is_file():
    raise TokenizerNotFoundError(f"tokenizer file not found: {path}")
  config = _read_config(path.parent)
  with open(path, "rb") as f:
    is_json = f.read(1) == b"{"
  return _load_hf(path, config) if is_json else _load_sentencepiece(path, config)


def _load_hf(path: pathlib.Path, config: dict) -> HFTokenizer:
  try:
    tok = hf.Tokenizer.from_file(str(path))
  except Exception as e:  # tokenizers raises a bare Exception on bad files
    raise errors.CheckpointError(f"{path}: not a valid tokenizer.json ({e})") from e
  vocab = tok.get_vocab(with_added_tokens=True)
  specials = _resolve_specials(config, lambda t: t in vocab)
  result = HFTokenizer(tok, specials, config["additional"], config["chat_template"])
  result._check_specials(str(path))  # pylint: disable=protected-access
  return result


def _load_sentencepiece(path: pathlib.Path, config: dict) -> SentencePieceTokenizer:
  proto = path.read_bytes()
  try:
    probe = spm.SentencePieceProcessor(model_proto=proto)
  except RuntimeError as e:
    raise errors.CheckpointError(f"{path}: not a valid sentencepiece model ({e})") from e
  added = config.get("added", {})
  names = {probe.id_to_piece(i) for i in range(probe.get_piece_size())} | set(added)
  specials = _resolve_specials(config, names.__contains__)
  # With a config file, its specials count, not the model's user-defined pieces.
  declared = config["added_special"] + config["additional"] if config.get("found") else None
  result = SentencePieceTokenizer(
      proto, specials, config.get("additional", ()), config.get("chat_template"),
      added_tokens=added, legacy=config.get("legacy", True),
      declared_specials=declared)
  result._check_specials(str(path))  # pylint: disable=protected-access
  return result


def _token_content(value: Any, where: str, key: str) -> str | None:
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  raise errors.CheckpointError(f"{where}: {key} must be a string or {{'content': ...}}, got {value!r}")


def _read_json(path: pathlib.Path) -> dict:
  text = path.read_text(encoding="utf-8")
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise errors.DataError(path, e.lineno, f"invalid JSON: {e.msg}") from e
  if not isinstance(data, dict):
    raise errors.DataError(path, 1, "expected a JSON object")
  return data


def _read_config(directory: pathlib.Path) -> dict:
  """Special tokens, added tokens and chat template from the files beside a tokenizer."""
  merged: dict[str, Any] = {}
  where: dict[str, str] = {}
  found = False
  # special_tokens_map.json overrides tokenizer_config.json, as in transformers.
  for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
    file = directory / name
    if file.is_file():
      found = True
      data = _read_json(file)
      for key, value in data.items():
        merged[key] = value
        where[key] = str(file)
  config: dict[str, Any] = {"found": found}
  for role in _ROLES:
    config[role] = (_token_content(merged[role], where[role], role) if role in merged else _MISSING)
  additional = []
  for key in ("additional_special_tokens", "extra_special_tokens"):
    value = merged.get(key) or []
    if isinstance(value, dict):  # model-specific named specials
      value = list(value.values())
    additional += [_token_content(v, where[key], key) for v in value]
  config["additional"] = list(dict.fromkeys(t for t in additional if t))
  added, added_special = {}, []
  for token_id, entry in (merged.get("added_tokens_decoder") or {}).items():
    content = _token_content(entry, where["added_tokens_decoder"], f"added_tokens_decoder[{token_id}]")
    added[content] = int(token_id)
    if isinstance(entry, dict) and entry.get("special"):
      added_special.append(content)
  config["added"], config["added_special"] = added, added_special
  template = merged.get("chat_template")
  if isinstance(template, list):  # named templates: take the default one
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    template = named.get("default")
  jinja_file = directory / CHAT_TEMPLATE_FILE
  if jinja_file.is_file():
    template = jinja_file.read_text(encoding="utf-8")
  config["chat_template"] = template if isinstance(template, str) else None
  if "legacy" in merged and merged["legacy"] is not None:
    config["legacy"] = bool(merged["legacy"])
  return config


def _resolve_specials(config: dict, known) -> dict[str, str | None]:
  out = {}
  for role in _ROLES:
    value = config.get(role, _MISSING)
    if value is _MISSING:
      value = next((name for name in _GUESSES[role] if known(name)), None)
    out[role] = value
  return out


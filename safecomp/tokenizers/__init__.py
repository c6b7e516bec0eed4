"""Tokenizers (sentencepiece, Hugging Face tokenizer.json, the testbed word-level one) and chat formats."""
from safecomp.tokenizers.chat import (
    apply_chat_template, chat_segments, encode_chat, end_of_turn, encode_prompt, encode_prompt_around, FAMILIES, jinja_template, inline_reasoning, render_template,
    Segment, strip_reasoning, testbed_assistant_text, validate_messages)
from safecomp.tokenizers.tokenizer import (
    ASSISTANT, BOS, EOS, HFTokenizer, load_tokenizer, PAD, SentencePieceTokenizer, TESTBED_SPECIAL_TOKENS,
    THINK_CLOSE, THINK_OPEN, Tokenizer, TokenizerNotFoundError, train_sentencepiece, UNK, USER,
    word_level_tokenizer)

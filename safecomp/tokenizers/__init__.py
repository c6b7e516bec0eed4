"""Tokenizers (sentencepiece, Hugging Face tokenizer.json, the testbed word-level one) and chat formats."""
from safecomp.tokenizers.chat import (
    apply_chat_template, chat_segments, encode_chat, encode_prompt, FAMILIES, render_template, Segment,
    testbed_assistant_text, validate_messages)
from safecomp.tokenizers.tokenizer import (
    ASSISTANT, BOS, EOS, HFTokenizer, load_tokenizer, PAD, SentencePieceTokenizer, TESTBED_SPECIAL_TOKENS,
    THINK_CLOSE, THINK_OPEN, Tokenizer, TokenizerNotFoundError, train_sentencepiece, UNK, USER,
    word_level_tokenizer)

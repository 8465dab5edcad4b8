"""Tokenizers: a checkpoint's own, or a real sentencepiece model trained on the run's text.

The embedded default has no checkpoint to take a tokenizer from and may not download one, so it trains a
small unigram sentencepiece model on the training text (well under a second), with T5's special ids
(pad 0, </s> 1, unk 2). Training is deterministic, and the model is cached under a hash of its inputs, so
every rank and every later run gets the same file.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5Tokenizer

from trainer.data.batch import task_names
from trainer.data.tasks import get_task
from trainer.paths import model_location

CACHE_DIR = Path(os.environ.get("SMOP_CACHE", Path.home() / ".cache" / "smop-trainer"))


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A hub name, a local directory written by save_pretrained, or a shipped model's name."""
    name_or_path = model_location(name_or_path, "model.tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"model.tokenizer: cannot load tokenizer '{name_or_path}' "
                         f"({str(e).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:  # most causal LMs' tokenizers: pad with </s>, which every mask then hides
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_tokenizer(texts: list[str], vocab_size: int = 1000, whole_words: tuple[str, ...] = (),
                    word_level: bool = False) -> T5Tokenizer:
    """A T5 tokenizer over a sentencepiece model trained on `texts` (cached by content).

    `whole_words` (the task's label words) become single pieces, so a target is one token and </s>, as
    with a real T5 vocabulary, rather than a chain of sub-word pieces a small model struggles to spell.
    word_level: one piece per whitespace-separated word of `texts` (sentencepiece's word model; vocab_size is
    then the word count + 3). For a closed language of short words: every word is one token and decoding
    restores the spaces between words (user-defined pieces lose them), so multi-word targets compare as text.
    """
    import sentencepiece as spm

    if word_level:
        vocab_size = len({w for text in texts for w in text.split()}) + 3
    key = f"|{vocab_size}|{whole_words}|{'word' if word_level else 'unigram'}|v1"
    digest = hashlib.sha256("\n".join(texts).encode() + key.encode()).hexdigest()[:16]
    folder = CACHE_DIR / f"spm-{digest}"
    if not (folder / "spiece.model").exists():
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buffer, vocab_size=vocab_size,
            model_type="word" if word_level else "unigram",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0,
            user_defined_symbols=list(whole_words), num_threads=1, minloglevel=2)
        _write_atomically(folder / "spiece.model", buffer.getvalue())
    return T5Tokenizer.from_pretrained(str(folder), extra_ids=0)


def _write_atomically(path: Path, data: bytes) -> None:
    # Ranks may train the same model at once: each writes a private file and renames it into place.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build_tokenizer(model, data, train_examples):
    """The run's tokenizer: model.tokenizer, else the backbone's own, else (the random 'tiny' backbone) a
    sentencepiece model trained on the training text, with each task's label words kept whole."""
    name = model.tokenizer or ("" if model.name_or_path == "tiny" else model.name_or_path)
    if name:
        return load_tokenizer(name, model.trust_remote_code)
    texts = [ex.input for ex in train_examples] + [ex.target for ex in train_examples]
    words = tuple(w for task in task_names(data) for w in (get_task(task).label_words or ()))
    return train_tokenizer(texts, whole_words=tuple(dict.fromkeys(words)))

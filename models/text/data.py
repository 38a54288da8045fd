"""Text preparation for the text CNN: cleaning, tokenizing, a vocabulary, fixed-length ids.

Everything a served model needs to turn a raw message into the ids it was trained on is
stored in the checkpoint's metadata (``meta["text"]``): the vocabulary in id order, the
maximum length, the padding/truncation side and the tokenizer's name, plus a character
vocabulary and length for models that also read characters (:class:`TextEncoder`). A
service therefore tokenizes exactly like training did, with no side files.

Cleaning removes HTML tags and decodes entities (SMS exports are full of ``&lt;#&gt;``)
with the standard library's ``html.parser``, then lower-cases. Digit runs of three or more
become a shape token (``<num5>`` for a five-digit short code) because the particular phone
number or code almost never repeats, but its shape is a strong spam signal.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np

PAD, OOV = "<pad>", "<oov>"
PAD_ID, OOV_ID = 0, 1
TOKENIZER = "harstream-words-v1"
CHAR_TOKENIZER = "harstream-chars-v1"
TEXT_COLUMNS = ("text", "message")
LABEL_COLUMNS = ("label", "class")

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+|[£$€%!?&@#*+]")
_LONG_DIGITS = 3
_MAX_DIGITS = 12


class _TextOnly(HTMLParser):
    """Collects character data and drops tags; entities are decoded (``convert_charrefs``)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_html(text: str) -> str:
    """``text`` without HTML tags, with entities such as ``&amp;`` and ``&lt;`` decoded."""
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return " ".join("".join(parser.parts).split())


def clean(text: str) -> str:
    """HTML removed, whitespace collapsed, lower-cased: the form the tokenizer sees."""
    return strip_html(text).lower()


def tokenize(text: str) -> list[str]:
    """Words (with an inner apostrophe), digit runs and a few spam-telling symbols."""
    tokens = []
    for tok in _TOKEN.findall(clean(text)):
        if tok.isdigit() and len(tok) >= _LONG_DIGITS:
            tok = f"<num{min(len(tok), _MAX_DIGITS)}>"
        tokens.append(tok)
    return tokens


def characters(text: str) -> list[str]:
    """Characters of the HTML-stripped text, case kept (capitals are a spam signal)."""
    return list(strip_html(text))


SPLITTERS = {"words": tokenize, "chars": characters}


class Vocabulary:
    """Token <-> id map; id 0 pads, id 1 stands for every token not seen in training.

    ``level`` says what a token is: ``words`` (see :func:`tokenize`) or ``chars``.
    """

    def __init__(self, tokens: Sequence[str], level: str = "words") -> None:
        if list(tokens[:2]) != [PAD, OOV]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {OOV!r}")
        if level not in SPLITTERS:
            raise ValueError(f"unknown vocabulary level {level!r}; expected {sorted(SPLITTERS)}")
        self.tokens = list(tokens)
        self.level = level
        self.split = SPLITTERS[level]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(
        cls, texts: Iterable[str], min_count: int = 2, max_size: int = 20000, level: str = "words"
    ) -> Vocabulary:
        """From training texts only: tokens seen ``min_count`` times, most frequent first.

        Rare training tokens stay out so that the OOV embedding is trained on real
        examples of rare words, which is what unseen messages will contain.
        """
        split = SPLITTERS[level]
        counts = Counter(tok for text in texts for tok in split(text))
        kept = [
            t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count
        ]
        return cls([PAD, OOV, *kept[: max_size - 2]], level)

    def encode(self, text: str, max_len: int) -> np.ndarray:
        """Ids of ``text``, truncated to ``max_len`` (keeping the start) and right-padded."""
        ids = [self.index.get(tok, OOV_ID) for tok in self.split(text)[:max_len]]
        out = np.full(max_len, PAD_ID, np.int32)
        out[: len(ids)] = ids
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids`` without padding (OOV ids come back as ``<oov>``)."""
        return [self.tokens[i] for i in ids if i != PAD_ID]


class TextEncoder:
    """Raw text -> the fixed-length int32 ids a text model takes.

    Word ids (``max_len`` of them) come first; a model with a character channel also gets
    ``char_len`` character ids after them, in the same row, so one array per message
    still goes through the Predictor's batching.
    """

    def __init__(
        self,
        words: Vocabulary,
        max_len: int,
        chars: Vocabulary | None = None,
        char_len: int = 0,
    ) -> None:
        if (chars is None) != (char_len == 0):
            raise ValueError("a character vocabulary needs char_len > 0, and only then")
        self.words, self.max_len = words, int(max_len)
        self.chars, self.char_len = chars, int(char_len)

    @property
    def width(self) -> int:
        """Ids per message."""
        return self.max_len + self.char_len

    def encode(self, text: str) -> np.ndarray:
        """``(width,)`` int32 ids of one message."""
        ids = self.words.encode(text, self.max_len)
        if self.chars is None:
            return ids
        return np.concatenate([ids, self.chars.encode(text, self.char_len)])

    def encode_all(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, width)`` int32 ids of ``texts``."""
        out = np.zeros((len(texts), self.width), np.int32)
        for i, text in enumerate(texts):
            out[i] = self.encode(text)
        return out

    def meta(self) -> dict[str, Any]:
        """The ``meta["text"]`` block of a checkpoint."""
        block: dict[str, Any] = {
            "tokenizer": TOKENIZER,
            "lowercase": True,
            "strip_html": True,
            "vocab": self.words.tokens,
            "max_len": self.max_len,
            "padding": "post",
            "truncation": "post",
            "pad_id": PAD_ID,
            "oov_id": OOV_ID,
        }
        if self.chars is not None:
            block["char_tokenizer"] = CHAR_TOKENIZER
            block["char_vocab"] = self.chars.tokens
            block["char_len"] = self.char_len
        return block

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> TextEncoder:
        """The encoder a checkpoint was trained with, checking the tokenizers' names."""
        block = meta.get("text")
        if not isinstance(block, dict) or "vocab" not in block or "max_len" not in block:
            raise ValueError("checkpoint metadata has no text block with vocab and max_len")
        for key, name in (("tokenizer", TOKENIZER), ("char_tokenizer", CHAR_TOKENIZER)):
            if (key in block or key == "tokenizer") and block.get(key) != name:
                raise ValueError(
                    f"checkpoint uses {key} {block.get(key)!r}; this harstream has {name!r}"
                )
        chars = Vocabulary(block["char_vocab"], "chars") if "char_vocab" in block else None
        return cls(Vocabulary(block["vocab"]), block["max_len"], chars, block.get("char_len", 0))


def texts_to_ids(texts: Sequence[str], meta: dict[str, Any]) -> np.ndarray:
    """Raw messages -> ``(n, width)`` int32 ids, exactly as the checkpoint was trained."""
    return TextEncoder.from_meta(meta).encode_all(texts)


def length_for(
    texts: Iterable[str], quantile: float = 0.99, floor: int = 8, level: str = "words"
) -> int:
    """A max length covering ``quantile`` of the training messages' token counts."""
    lengths = [len(SPLITTERS[level](t)) for t in texts]
    return max(floor, int(np.ceil(np.quantile(lengths, quantile)))) if lengths else floor


def read_labelled_texts(path: str | Path) -> tuple[list[str], list[str]]:
    """Read ``(texts, labels)`` from the SMS Spam Collection layout or a CSV.

    ``label<TAB>text`` per line (no header) is the SMS Spam Collection; a CSV with a header
    needs a text column (``text`` or ``message``) and a label column (``label`` or
    ``class``), names matched case-insensitively.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no text data file at {path}")
    raw = path.read_text(encoding="utf-8", errors="replace")
    first = raw.split("\n", 1)[0]
    if "\t" in first and not _is_csv_header(first):
        return _read_tab_separated(raw, path)
    return _read_csv(raw, path)


def _is_csv_header(line: str) -> bool:
    names = {c.strip().strip('"').lower() for c in next(csv.reader([line]))}
    return bool(names & set(TEXT_COLUMNS)) and bool(names & set(LABEL_COLUMNS))


def _read_tab_separated(raw: str, path: Path) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        if not sep or not label.strip():
            raise ValueError(f"{path}:{number}: expected 'label<TAB>text', got {line[:60]!r}")
        labels.append(label.strip())
        texts.append(text)
    if not texts:
        raise ValueError(f"{path} holds no messages")
    return texts, labels


def _read_csv(raw: str, path: Path) -> tuple[list[str], list[str]]:
    rows = list(csv.reader(io.StringIO(raw, newline="")))
    if not rows:
        raise ValueError(f"{path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    text_col = next((header.index(c) for c in TEXT_COLUMNS if c in header), None)
    label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    if text_col is None or label_col is None:
        raise ValueError(
            f"{path}: a CSV needs a text column ({' or '.join(TEXT_COLUMNS)}) and a label "
            f"column ({' or '.join(LABEL_COLUMNS)}); found {rows[0]}. "
            "The SMS Spam Collection layout 'label<TAB>text' is read too."
        )
    texts, labels = [], []
    for number, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(text_col, label_col):
            raise ValueError(
                f"{path}:{number}: row has {len(row)} columns, header has {len(header)}"
            )
        texts.append(row[text_col])
        labels.append(row[label_col].strip())
    if not texts:
        raise ValueError(f"{path} holds no messages")
    return texts, labels


@dataclass
class Split:
    """Row indices of each part of a stratified split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def file_digest(path: str | Path) -> str:
    """sha256 of a data file, so a held-out evaluation can prove it has the same messages."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def stratified_split(
    labels: Sequence[str], seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1
) -> Split:
    """Seeded train/validation/test indices with each label's share kept in every part."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    labels = np.asarray(labels)
    rest, test = train_test_split(
        index, test_size=test_fraction, stratify=labels, random_state=seed
    )
    train, val = train_test_split(
        rest,
        test_size=val_fraction / (1.0 - test_fraction),
        stratify=labels[rest],
        random_state=seed,
    )
    return Split(np.sort(train), np.sort(val), np.sort(test))

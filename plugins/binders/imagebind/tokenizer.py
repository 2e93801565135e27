"""The CLIP byte-level BPE tokenizer ImageBind's text tower reads, with its vocabulary shipped in
this package (`bpe_simple_vocab_16e6.txt.gz`, OpenAI CLIP's file, MIT licence)."""

from __future__ import annotations

import gzip
import html
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import regex

from sah.lazy import lazy_import

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_import("torch")

VOCAB_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # the merges CLIP trained with; the file holds more
SOT, EOT = "<|startoftext|>", "<|endoftext|>"

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_CURLY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'})


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character, so BPE never sees whitespace or control bytes.
    Printable latin-1 bytes map to themselves; the others to code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _fix_text(text: str) -> str:
    """ftfy's repair when it is installed (bit-faithful to the reference tokenizer); otherwise the
    repairs that matter for captions: UTF-8 read as cp1252/latin-1, curly quotes, NFC."""
    try:
        import ftfy
    except ImportError:
        pass
    else:
        return ftfy.fix_text(text)
    for codec in ("cp1252", "latin-1"):
        try:
            repaired = text.encode(codec).decode("utf-8")
        except UnicodeError:
            continue
        if repaired != text:
            text = repaired
            break
    return unicodedata.normalize("NFC", text.translate(_CURLY))


def clean(text: str) -> str:
    """The reference cleaning: fix text, unescape HTML twice, collapse whitespace, lowercase."""
    text = html.unescape(html.unescape(_fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    """`tokenizer(["a dog"])` -> int64 `[B, 77]`: SOT, BPE ids (at most 75), EOT, zero padding."""

    def __init__(self, vocab_path: str | Path = VOCAB_PATH) -> None:
        with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
        symbols = list(byte_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, word: str) -> list[str]:
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """BPE ids of one string, without SOT/EOT."""
        ids = []
        for piece in _PATTERN.findall(clean(text)):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(word))
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[i] for i in ids if i not in (self.sot_id, self.eot_id))
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: list[str] | str, context_length: int = CONTEXT_LENGTH) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), context_length, dtype=torch.int64)
        for row, text in enumerate(texts):
            # upstream's current rule: keep SOT and the first 75 BPE ids, so EOT always survives and
            # the text head (which reads the EOT position) never falls back to SOT
            ids = ([self.sot_id] + self.encode(text))[: context_length - 1] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@lru_cache(maxsize=1)
def default_tokenizer() -> ClipTokenizer:
    return ClipTokenizer()

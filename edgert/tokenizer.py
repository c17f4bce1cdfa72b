"""Byte-level BPE tokenizer (GPT-2 style: llama.cpp's `gpt2` tokenizer model) from GGUF metadata.

Encoding agrees with the tokenizer transformers builds from the same GGUF: added tokens (control,
user-defined) are cut out of the text first, leftmost-longest; the rest is split by the
pre-tokenizer regex of the vocabulary, each piece goes to UTF-8 bytes, GPT-2's byte-to-character
table and BPE merges (lowest rank first, leftmost on ties). The one deliberate difference:
`smollm` splits every number character off first, as SmolLM2's own tokenizer.json and llama.cpp
do and transformers 5.23's GGUF loader does not; the ids differ only where whitespace comes
right before a number ("a  1", " ½").

The regexes need \\p{L} and \\p{N}, which `re` lacks (and the `regex` package is not available
in the browser). So the text is first mapped character for character to ASCII stand-ins of its
class (letter 'a', number '0', other whitespace '\\t', anything else '!'), the ASCII regex runs on
that, and its match spans cut the original text. Classes come from `unicodedata`, so characters
newer than Python's Unicode database count as "other" (transformers' Oniguruma may know them).
"""
from __future__ import annotations

import bisect
import codecs
import functools
import hashlib
import heapq
import re
import unicodedata

import numpy as np

from .errors import EdgeError

CONTROL, USER_DEFINED = 3, 4  # GGUF tokenizer.ggml.token_type values matched whole in the text
# Special tokens that end a turn, besides eos (llama.cpp's end-of-generation list, in part).
EOT_NAMES = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>")
_CACHE_LIMIT = 1 << 14  # pieces kept by the per-tokenizer BPE cache before it is emptied

_CONTRACTIONS = "'s|'t|'re|'ve|'m|'ll|'d"
_GPT2 = rf"{_CONTRACTIONS}| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"
_QWEN2 = rf"(?i:{_CONTRACTIONS})|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# Pre-tokenizer regexes over the ASCII stand-in text ([A-Za-z] is \p{L}, [0-9] is \p{N}, \s under
# re.ASCII is exactly Unicode White_Space restricted to ASCII).
PRE_TOKENIZERS = {
    "gpt2": _GPT2,
    # Digits(individual_digits=True), then the GPT-2 regex on what lies between the digits.
    "smollm": rf"{_CONTRACTIONS}| ?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+|\s+(?![^\s0-9])|\s+",
    "qwen2": _QWEN2,
    "deepseek-r1-qwen": _QWEN2,
    "llama-bpe": _QWEN2.replace("|[0-9]|", "|[0-9]{1,3}|"),
}

_WHITE_SPACE = frozenset("\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
                         "\u2028\u2029\u202f\u205f\u3000")  # Unicode White_Space above ASCII


def _byte_chars() -> tuple[str, ...]:
    """GPT-2's bytes_to_unicode: 256 one-character str, printable bytes as themselves."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(0x100, 0x200))
    return tuple(chr(b) if b in keep else chr(next(extra)) for b in range(256))


BYTE_CHARS = _byte_chars()
_BYTE_ALPHABET = "".join(BYTE_CHARS)  # codecs.charmap_decode table: bytes -> byte-level spelling
_BYTE_MAP = codecs.charmap_build(_BYTE_ALPHABET)  # and codecs.charmap_encode's, back to bytes
_NOT_SPELLED = re.compile(f"[^{re.escape(_BYTE_ALPHABET)}]")


class _StandIns(dict):
    """str.translate table, filled on demand: code point -> one ASCII char standing for its class.

    'ſ' (U+017F) case-folds to 's' under (?i), so it stands as 'S': a letter that the
    case-insensitive contractions match and the case-sensitive ones do not.
    """

    def __missing__(self, cp: int) -> str:
        c = chr(cp)
        cat = unicodedata.category(c)[0]
        stand = (c if cp < 0x80 else "S" if cp == 0x17F else "a" if cat == "L" else "0" if cat == "N"
                 else "\t" if c in _WHITE_SPACE else "!")
        self[cp] = stand
        return stand


_STAND_INS = _StandIns()


def _list(fields: dict, key: str) -> list:
    """fields[key] as a list; [] when absent."""
    value = fields.get(key)
    return [] if value is None else list(value)


def tokenizer_dict_from_gguf(fields: dict) -> dict:
    """The tokenizer part of a .edge header (JSON-serialisable) from GGUF metadata {key: value}."""
    model = fields.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise EdgeError(f"tokenizer model {model!r} is not supported; edgert supports 'gpt2' (byte-level BPE)")
    pre = fields.get("tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZERS:
        raise EdgeError(f"pre-tokenizer {pre!r} is not supported; edgert supports {', '.join(PRE_TOKENIZERS)}")
    tokens = _list(fields, "tokenizer.ggml.tokens")
    merges = _list(fields, "tokenizer.ggml.merges")
    types = _list(fields, "tokenizer.ggml.token_type")
    if not tokens or not merges:
        raise EdgeError("the GGUF has no tokenizer.ggml.tokens or no tokenizer.ggml.merges")
    if types and len(types) != len(tokens):
        raise EdgeError(f"the GGUF lists {len(types)} token types for {len(tokens)} tokens")
    special = {name: fields.get(f"tokenizer.ggml.{name}_token_id") for name in ("bos", "eos", "unknown", "padding")}
    special = {name: None if i is None else int(i) for name, i in special.items()}
    return {
        "model": model,
        "pre": pre,
        "tokens": [str(t) for t in tokens],
        "merges": [str(m) for m in merges],
        "control_ids": [i for i, t in enumerate(types) if int(t) == CONTROL],
        "user_defined_ids": [i for i, t in enumerate(types) if int(t) == USER_DEFINED],
        "bos_id": special["bos"], "eos_id": special["eos"],
        "unk_id": special["unknown"], "pad_id": special["padding"],
        "add_bos": bool(fields.get("tokenizer.ggml.add_bos_token", False)),
    }


class Tokenizer:
    """Byte-level BPE: encode(str) -> list[int] token ids, decode(list[int]) -> str.

    Held compactly (about 5 MB for a 150k vocabulary), all NumPy arrays behind memoryviews:
    the tokens' bytes as one blob with int64 offsets [vocab + 1], and the merges as a table
    over token ids sorted by (left, right) -- per left id a row range (first[left] ..
    first[left + 1]) of right ids, ranks and merged ids, all int32. Merge parts and results
    that are no token get ids from vocab_size up: BPE runs on ids, and such an id left in its
    output raises EdgeError."""

    def __init__(self, d: dict):
        try:
            if d["model"] != "gpt2" or d["pre"] not in PRE_TOKENIZERS:
                raise EdgeError(f"tokenizer {d['model']!r} / pre-tokenizer {d['pre']!r} is not supported")
            tokens, merges, control, user = d["tokens"], d["merges"], d["control_ids"], d["user_defined_ids"]
            self.bos_id, self.eos_id, self.add_bos = d["bos_id"], d["eos_id"], bool(d["add_bos"])
            named = [d[k] for k in ("bos_id", "eos_id", "unk_id", "pad_id") if d[k] is not None]
        except KeyError as e:
            raise EdgeError(f"tokenizer data lacks {e}") from None
        self.vocab_size = n = len(tokens)
        if any(not 0 <= i < n for i in (*control, *user, *named)):
            raise EdgeError(f"tokenizer data names a token id outside the vocabulary of {n}")
        self._rx = re.compile(PRE_TOKENIZERS[d["pre"]], re.ASCII)
        # transformers keys its vocabulary by the byte-level spelling: a token with other characters
        # is respelled from its UTF-8 bytes; on duplicate spellings the later id wins.
        respelled, spell, joined = np.zeros(n, bool), tokens, "".join(tokens)
        if _NOT_SPELLED.search(joined):
            respelled[:] = [bool(_NOT_SPELLED.search(t)) for t in tokens]
            spell = [t if not r else "".join(BYTE_CHARS[b] for b in t.encode()) for t, r in zip(tokens, respelled)]
            joined = "".join(spell)
        self._respelled = memoryview(respelled)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(np.fromiter(map(len, spell), np.int64, n), out=offsets[1:])
        self._offsets = memoryview(offsets)
        self._blob = codecs.charmap_encode(joined, "strict", _BYTE_MAP)[0]  # the tokens' bytes
        vocab = {t: i for i, t in enumerate(spell)}
        self._byte_ids = tuple(vocab.get(c, -1) for c in BYTE_CHARS)  # -1: no token, dropped as transformers does
        self._drops_bytes = -1 in self._byte_ids
        self._merge_table(merges, vocab)
        # Matched whole in text, as transformers' added tokens: control tokens spelled in the byte
        # alphabet and the named bos/eos/unk/pad are special; user-defined ones are not.
        self._special = frozenset(i for i in control if not _NOT_SPELLED.search(tokens[i])) | set(named)
        added = {tokens[i]: i for i in sorted(self._special)}
        plain = {tokens[i]: i for i in user if tokens[i] in vocab}
        self._added = {**added, **plain}
        self._split_all = self._splitter(self._added)
        self._split_plain = self._splitter(plain)
        self.eot_ids = frozenset([self.eos_id] if self.eos_id is not None else []) | {
            added[t] for t in EOT_NAMES if t in added}
        self._cache: dict[str, list[int]] = {}

    def _merge_table(self, merges, vocab: dict) -> None:
        """Resolve merges "left right" (byte-level spellings) to ids: self._first, _right, _rank,
        _merged (see the class docstring); _extra {id: spelling} for the ids beyond the vocabulary.
        A pair listed twice keeps its later rank."""
        def ids(get=vocab.get):
            for m in merges:
                a, _, b = str.partition(m, " ")  # TypeError for a merge that is no str, as for tokens
                yield get(a, -1)
                yield get(b, -1)
                yield get(a + b, -1)
        table = np.fromiter(ids(), np.int64, 3 * len(merges)).reshape(-1, 3)  # left, right, merged id per rank
        extra: dict[str, int] = {}
        for r in np.flatnonzero((table < 0).any(axis=1)):  # parts that are no token: rare
            a, _, b = merges[r].partition(" ")
            if a and b and " " not in b:  # anything else never matches two symbols
                table[r] = [vocab[t] if t in vocab else extra.setdefault(t, self.vocab_size + len(extra))
                            for t in (a, b, a + b)]
        ranks = np.flatnonzero((table >= 0).all(axis=1))
        n = self.vocab_size + len(extra)
        keys = table[ranks, 0] * n + table[ranks, 1]
        order = np.argsort(keys, kind="stable")  # by (left, right), a repeated pair by rank
        last = np.ones(len(order), bool)
        last[:-1] = keys[order[1:]] != keys[order[:-1]]
        ranks = ranks[order[last]]
        self._extra = {i: t for t, i in extra.items()}
        self._first, self._right, self._merged, self._rank = (memoryview(a.astype(np.int32)) for a in (
            np.searchsorted(table[ranks, 0], np.arange(n + 1)), table[ranks, 1], table[ranks, 2], ranks))

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 (hex) of the tokens and merges: equal digests, the same vocabulary and BPE."""
        h = hashlib.sha256()
        for part in (self._blob, self._offsets, self._respelled, self._first, self._right, self._rank, self._merged):
            h.update(part)
        return h.hexdigest()

    @classmethod
    def from_dict(cls, d: dict) -> Tokenizer:
        return cls(d)

    @staticmethod
    def _splitter(tokens: dict):
        """Regex whose split() alternates text and added tokens, leftmost-longest; None if none."""
        if not tokens:
            return None
        return re.compile("(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")

    def token_text(self, token_id: int) -> str:
        """The token as the GGUF spells it (byte-level characters, e.g. 'Ġthe'; '<|im_end|>')."""
        b = self._blob[self._offsets[token_id]:self._offsets[token_id + 1]]
        return b.decode() if self._respelled[token_id] else codecs.charmap_decode(b, "strict", _BYTE_ALPHABET)[0]

    def is_special(self, token_id: int) -> bool:
        """True for control tokens and the named bos/eos/unk/pad (those decode(skip_special) drops)."""
        return token_id in self._special

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of text; add_bos None uses the model's flag. parse_special=False reads control
        tokens as plain text (user-defined ones such as <tool_call> still match, as in transformers)."""
        ids = [self.bos_id] if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None else []
        splitter = self._split_all if parse_special else self._split_plain
        parts = splitter.split(text) if splitter else [text]
        for k, part in enumerate(parts):
            if k % 2:
                ids.append(self._added[part])
            elif part:
                ids.extend(self._encode_plain(part))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        if text.isascii():
            pieces = self._rx.findall(text)
        else:
            pieces = [text[m.start():m.end()] for m in self._rx.finditer(text.translate(_STAND_INS))]
        cache, out = self._cache, []
        for piece in pieces:
            ids = cache.get(piece)
            if ids is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                ids = cache[piece] = self._bpe(piece)
            out.extend(ids)
        return out

    def _bpe(self, piece: str) -> list[int]:
        """BPE of one pre-token on ids: a heap of candidate merges, lowest (rank, position) first."""
        try:
            syms = list(map(self._byte_ids.__getitem__, piece.encode("utf-8")))
        except UnicodeEncodeError as e:
            raise EdgeError(f"text is not valid Unicode ({e.reason}: {piece[e.start:e.end]!r})") from None
        if self._drops_bytes:
            syms = [s for s in syms if s >= 0]
        n, first, right, rank, merged = len(syms), self._first, self._right, self._rank, self._merged
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        heap, new = [], range(n - 1)  # new: positions i whose pair (i, nxt[i]) is to look up
        while True:
            for i in new:  # the merge table row of (a, b): b's place in a's row range, if it is there
                a, b = syms[i], syms[nxt[i]]
                hi = first[a + 1]
                k = bisect.bisect_left(right, b, first[a], hi)
                if k < hi and right[k] == b:
                    heapq.heappush(heap, (rank[k], i, a, k))
            while heap:  # stale if a neighbour merged since the pair was pushed (it is another then)
                _, i, a, k = heapq.heappop(heap)
                j = nxt[i]
                if syms[i] == a and j < n and syms[j] == right[k]:
                    break
            else:
                break
            syms[i], syms[j] = merged[k], -1
            q = nxt[i] = nxt[j]
            if q < n:
                prv[q] = i
            p = prv[i]
            new = ((p,) if p >= 0 else ()) + ((i,) if q < n else ())
        out = [s for s in syms if s >= 0]
        if self._extra and (beyond := [s for s in out if s >= self.vocab_size]):
            raise EdgeError(f"tokenizer merges make {self._extra[beyond[0]]!r}, which is not in the vocabulary")
        return out

    def _bytes(self, ids, skip_special: bool = False) -> bytes:
        ids = [int(i) for i in ids]
        if ids and not 0 <= min(ids) <= max(ids) < self.vocab_size:
            raise EdgeError(f"token id {min(ids) if min(ids) < 0 else max(ids)} is outside the vocabulary "
                            f"of {self.vocab_size}")
        blob, off = self._blob, self._offsets
        return b"".join([blob[off[i]:off[i + 1]] for i in ids if not (skip_special and i in self._special)])

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of token ids; bytes that are not valid UTF-8 become U+FFFD."""
        return self._bytes(ids, skip_special).decode("utf-8", "replace")

    def stream(self) -> _Stream:
        """A decoder fed one id at a time (for printing tokens as they are generated)."""
        return _Stream(self)


class _Stream:
    """push(id) -> the text completed so far (an incomplete UTF-8 sequence is held back); flush()."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self._tokenizer._bytes([token_id]))

    def flush(self) -> str:
        """What is held back, with U+FFFD for an unfinished sequence; the stream can go on after."""
        return self._decoder.decode(b"", final=True)

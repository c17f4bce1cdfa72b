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

import codecs
import heapq
import re
import unicodedata

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
_CHAR_TO_LATIN1 = {ord(c): chr(b) for b, c in enumerate(BYTE_CHARS)}  # str.translate: spelling -> latin-1
_LATIN1_TO_CHAR = {b: c for b, c in enumerate(BYTE_CHARS)}  # and back
_NOT_SPELLED = re.compile(f"[^{re.escape(''.join(BYTE_CHARS))}]")


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
    """Byte-level BPE: encode(str) -> list[int] token ids, decode(list[int]) -> str."""

    def __init__(self, d: dict):
        try:
            if d["model"] != "gpt2" or d["pre"] not in PRE_TOKENIZERS:
                raise EdgeError(f"tokenizer {d['model']!r} / pre-tokenizer {d['pre']!r} is not supported")
            self._tokens = list(d["tokens"])
            merges, control, user = d["merges"], d["control_ids"], d["user_defined_ids"]
            self.bos_id, self.eos_id, self.add_bos = d["bos_id"], d["eos_id"], bool(d["add_bos"])
            named = [d[k] for k in ("bos_id", "eos_id", "unk_id", "pad_id") if d[k] is not None]
        except KeyError as e:
            raise EdgeError(f"tokenizer data lacks {e}") from None
        self.vocab_size = n = len(self._tokens)
        if any(not 0 <= i < n for i in (*control, *user, *named)):
            raise EdgeError(f"tokenizer data names a token id outside the vocabulary of {n}")
        self._rx = re.compile(PRE_TOKENIZERS[d["pre"]], re.ASCII)
        # transformers keys its vocabulary by the byte-level spelling: a token with other characters
        # is respelled from its UTF-8 bytes; on duplicate spellings the later id wins.
        self._spell = self._tokens
        if _NOT_SPELLED.search("".join(self._tokens)):
            self._spell = [t if not _NOT_SPELLED.search(t) else "".join(BYTE_CHARS[b] for b in t.encode())
                           for t in self._tokens]
        self._vocab = vocab = {t: i for i, t in enumerate(self._spell)}
        self._unknown_chars = frozenset(c for c in BYTE_CHARS if c not in vocab)  # dropped, as transformers does
        self._ranks = {m: rank for rank, m in enumerate(merges)}  # "left right" (byte-level spellings) -> rank
        # Matched whole in text, as transformers' added tokens: control tokens spelled in the byte
        # alphabet and the named bos/eos/unk/pad are special; user-defined ones are not.
        self._special = frozenset(i for i in control if not _NOT_SPELLED.search(self._tokens[i])) | set(named)
        added = {self._tokens[i]: i for i in sorted(self._special)}
        plain = {self._tokens[i]: i for i in user if self._tokens[i] in vocab}
        self._added = {**added, **plain}
        self._split_all = self._splitter(self._added)
        self._split_plain = self._splitter(plain)
        self.eot_ids = frozenset([self.eos_id] if self.eos_id is not None else []) | {
            added[t] for t in EOT_NAMES if t in added}
        self._cache: dict[str, list[int]] = {}

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
        return self._tokens[token_id]

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
        """BPE of one pre-token: a heap of candidate merges, lowest (rank, position) first."""
        try:
            syms = list(piece.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_CHAR))
        except UnicodeEncodeError as e:
            raise EdgeError(f"text is not valid Unicode ({e.reason}: {piece[e.start:e.end]!r})") from None
        if self._unknown_chars:
            syms = [c for c in syms if c not in self._unknown_chars]
        n, ranks = len(syms), self._ranks
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get(f"{syms[i]} {syms[i + 1]}")) is not None]
        heapq.heapify(heap)
        nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            # Stale if a neighbour merged since this was pushed (then the pair, so its rank, differs).
            if not syms[i] or j >= n or ranks.get(f"{syms[i]} {syms[j]}") != rank:
                continue
            syms[i] += syms[j]
            syms[j] = ""
            k = nxt[i] = nxt[j]
            if k < n:
                prv[k] = i
                if (r := ranks.get(f"{syms[i]} {syms[k]}")) is not None:
                    heapq.heappush(heap, (r, i))
            p = prv[i]
            if p >= 0 and (r := ranks.get(f"{syms[p]} {syms[i]}")) is not None:
                heapq.heappush(heap, (r, p))
        try:
            return [self._vocab[s] for s in syms if s]
        except KeyError as e:
            raise EdgeError(f"tokenizer merges make {e.args[0]!r}, which is not in the vocabulary") from None

    def _bytes(self, ids, skip_special: bool = False) -> bytes:
        ids = [int(i) for i in ids]
        if ids and not 0 <= min(ids) <= max(ids) < self.vocab_size:
            raise EdgeError(f"token id {min(ids) if min(ids) < 0 else max(ids)} is outside the vocabulary "
                            f"of {self.vocab_size}")
        spell = self._spell
        text = "".join(spell[i] for i in ids if not (skip_special and i in self._special))
        return text.translate(_CHAR_TO_LATIN1).encode("latin-1")

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

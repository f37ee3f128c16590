"""Byte-level byte-pair encoding (BPE), the tokenizer of GPT-2.

The idea: start from the 256 possible bytes, so any text can be written down. Then repeat:
count every pair of adjacent tokens, give the most frequent pair a new id, and replace it
everywhere. Each merge makes the text shorter; after `num_merges` merges the vocabulary has
256 + num_merges tokens, and common words become single tokens.

Two rules make training deterministic, and every trainer in this module uses both:

- **Tie rule**: the most frequent pair wins; among pairs with equal counts, the smallest pair
  wins, comparing pairs as tuples of ids: (32, 116) beats (101, 32).
- **Stop rule**: training stops early, returning fewer merges, once the best pair occurs fewer
  than 2 times: a token for a pair seen once would be used in that one place only.

GPT-2 first splits text into chunks with a regular expression (words, numbers, punctuation,
whitespace), so merges never cross a chunk boundary: "dog." and "dog!" share the token "dog".
To encode a chunk, apply the learned merges in the order they were learned (their *rank*).
"""

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import regex

# GPT-2's published pre-tokenising pattern (needs the `regex` package for \p{...}).
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CONFIG_FILE = "olm_edu_tokenizer.json"  # our pattern and special tokens, next to the GPT-2 files
_CACHE_LIMIT = 100_000  # chunks remembered by `encode` before the cache is emptied


def get_pair_counts(ids: Sequence[int]) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs: [5, 5, 5] -> {(5, 5): 2} (overlaps count)."""
    return Counter(zip(ids, ids[1:]))


def merge(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of `pair` by `new_id`, scanning left to right.

    Occurrences never overlap: merging (5, 5) -> 256 turns [5, 5, 5] into [256, 5].
    """
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def most_frequent_pair(counts: Mapping[tuple[int, int], int]) -> tuple[int, int]:
    """The pair with the highest count; ties go to the smallest pair (the module's tie rule)."""
    if not counts:
        raise ValueError("counts is empty: there is no pair to choose")
    return min(counts, key=lambda pair: (-counts[pair], pair))


def train_naive(ids: list[int], num_merges: int) -> dict[tuple[int, int], int]:
    """Learn up to `num_merges` merges on one sequence of byte values (0-255), recounting all
    pairs after every merge. Returns {pair: new_id}, new ids 256, 257, ... in learning order."""
    _check_num_merges(num_merges)
    merges: dict[tuple[int, int], int] = {}
    while len(merges) < num_merges:
        counts = get_pair_counts(ids)
        if not counts:
            break
        pair = most_frequent_pair(counts)
        if counts[pair] < 2:  # the stop rule
            break
        merges[pair] = 256 + len(merges)
        ids = merge(ids, pair, merges[pair])
    return merges


def learn_merges(chunks: Mapping[bytes, int] | Iterable[bytes],
                 num_merges: int) -> dict[tuple[int, int], int]:
    """Learn merges from many chunks, fast; the same merges as `train_naive` would learn if it
    counted the pairs of every chunk (pairs never cross chunks), with the same tie and stop rules.

    `chunks` is a word-frequency table {chunk: count} or an iterable of chunks (repeats allowed);
    pass [data] to train on one long chunk. Speed comes from two ideas:
    - each distinct chunk is stored once with its frequency, and its pairs count `frequency` times;
    - after a merge only the chunks that contain the pair are recounted (an index pair -> chunks
      says which), and a heap finds the best pair; heap entries whose count is out of date are
      skipped when they surface ("lazy deletion") instead of being searched for and removed.
    """
    _check_num_merges(num_merges)
    frequencies = _chunk_frequencies(chunks)
    words = [list(chunk) for chunk in frequencies]  # each distinct chunk as a list of ids
    weights = list(frequencies.values())
    pair_counts: Counter[tuple[int, int]] = Counter()
    chunks_with: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for index, word in enumerate(words):
        for pair in _add_pairs(word, weights[index], pair_counts):
            chunks_with[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)  # smallest (-count, pair) first: exactly the tie rule

    merges: dict[tuple[int, int], int] = {}
    while len(merges) < num_merges:
        pair = _pop_most_frequent(heap, pair_counts)
        if pair is None:
            break
        new_id = merges[pair] = 256 + len(merges)
        touched: set[tuple[int, int]] = set()
        for index in chunks_with.pop(pair):
            new_word = merge(words[index], pair, new_id)
            if len(new_word) == len(words[index]):  # the index is lazy too: pair gone already
                continue
            touched.update(_add_pairs(words[index], -weights[index], pair_counts))
            for new_pair in _add_pairs(new_word, weights[index], pair_counts):
                chunks_with[new_pair].add(index)
                touched.add(new_pair)
            words[index] = new_word
        for touched_pair in touched:  # one fresh heap entry per pair whose count changed
            if pair_counts[touched_pair] > 0:
                heapq.heappush(heap, (-pair_counts[touched_pair], touched_pair))
            else:
                del pair_counts[touched_pair]
    return merges


def _add_pairs(word: list[int], weight: int, pair_counts: Counter) -> Iterable[tuple[int, int]]:
    """Add each pair of `word`, `weight` times, to pair_counts (a negative weight removes them);
    return the pairs."""
    pairs = get_pair_counts(word)
    for pair, count in pairs.items():
        pair_counts[pair] += count * weight
    return pairs.keys()


def _pop_most_frequent(heap: list, pair_counts: Mapping) -> tuple[int, int] | None:
    """Pop heap entries until one is current; None when the stop rule says to stop."""
    while heap:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair) == -negative_count:
            return pair if -negative_count >= 2 else None
    return None


def _chunk_frequencies(chunks: Mapping[bytes, int] | Iterable[bytes]) -> dict[bytes, int]:
    if isinstance(chunks, (bytes, bytearray, str)):
        raise TypeError("chunks must be a collection of bytes chunks; pass [data] for one chunk")
    frequencies = dict(chunks) if isinstance(chunks, Mapping) else Counter(chunks)
    for chunk, count in frequencies.items():
        if not isinstance(chunk, bytes):
            raise TypeError(f"chunks must be bytes, got {chunk!r}; encode text with .encode()")
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"frequency of chunk {chunk!r} is {count!r}; it must be an int >= 1")
    return frequencies


def _check_num_merges(num_merges: int) -> None:
    if not isinstance(num_merges, int) or num_merges < 0:
        raise ValueError(f"num_merges={num_merges!r} must be an int >= 0")


def vocab_from_merges(merges: Mapping[tuple[int, int], int]) -> dict[int, bytes]:
    """{id: bytes} for the 256 bytes (id = byte value) and every merged token, in rank order."""
    vocab = {byte: bytes([byte]) for byte in range(256)}
    for (left, right), new_id in merges.items():
        vocab[new_id] = vocab[left] + vocab[right]
    return vocab


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character, used in vocab.json and merges.txt.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68
    bytes (controls, space, ...) get the characters chr(256), chr(257), ... in byte order, so
    the space byte 32 is written 'Ġ' (chr(288)).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + len(table) - len(printable))
    return dict(sorted(table.items()))


def _split_on_special(text: str, specials: Iterable[str]) -> list[str]:
    """[text, special, text, special, ..., text]: specials at the odd positions."""
    specials = sorted(specials, key=len, reverse=True)  # the longest match wins
    if not specials:
        return [text]
    return regex.split("(" + "|".join(regex.escape(token) for token in specials) + ")", text)


class BPETokenizer:
    """A byte-level BPE tokenizer: text <-> token ids.

    vocab: {id: bytes} for every token, special tokens included (as their UTF-8 bytes).
    merges: {(left_id, right_id): new_id} in rank order (the order they were learned).
    pattern: the pre-tokenising regex, or None to treat the whole text as one chunk (slow to
        encode for long texts: each merge step rescans the chunk).
    special_tokens: {string: id}, tokens such as "<|endoftext|>" that are never merged.
    """

    def __init__(self, vocab: Mapping[int, bytes], merges: Mapping[tuple[int, int], int], *,
                 pattern: str | None = GPT2_SPLIT_PATTERN,
                 special_tokens: Mapping[str, int] | None = None):
        self.vocab, self.merges = dict(vocab), dict(merges)
        self.pattern, self.special_tokens = pattern, dict(special_tokens or {})
        self._check()
        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._byte_ids = self._single_byte_ids()
        self._splitter = regex.compile(pattern) if pattern is not None else None
        self._cache: dict[str, list[int]] = {}

    def _check(self) -> None:
        if sorted(self.vocab) != list(range(len(self.vocab))):
            raise ValueError(f"vocab ids must be 0..{len(self.vocab) - 1} without gaps")
        for (left, right), new_id in self.merges.items():
            parts = self.vocab.get(left), self.vocab.get(right)
            if None in parts or self.vocab.get(new_id) != parts[0] + parts[1]:
                raise ValueError(f"merge ({left}, {right}) -> {new_id} does not match the vocab")
        for token, token_id in self.special_tokens.items():
            if self.vocab.get(token_id) != token.encode("utf-8"):
                raise ValueError(f"special token {token!r} has id {token_id}, "
                                 "whose vocab entry is different")

    def _single_byte_ids(self) -> list[int]:
        """byte -> id of its token; GPT-2's vocab does not put byte b at id b."""
        special_ids = set(self.special_tokens.values())
        byte_ids: dict[int, int] = {}
        for token_id in sorted(self.vocab):
            if len(self.vocab[token_id]) == 1 and token_id not in special_ids:
                byte_ids.setdefault(self.vocab[token_id][0], token_id)
        missing = sorted(set(range(256)) - set(byte_ids))
        if missing:
            raise ValueError(f"vocab has no token for bytes {missing[:8]}; all 256 are needed")
        return [byte_ids[byte] for byte in range(256)]

    @classmethod
    def train(cls, text: str, vocab_size: int, *, pattern: str | None = GPT2_SPLIT_PATTERN,
              special_tokens: Sequence[str] = ("<|endoftext|>",)) -> "BPETokenizer":
        """Learn a tokenizer of at most `vocab_size` tokens: 256 bytes + merges + special tokens.

        Special tokens are cut out of `text` before training and get the ids after the merges.
        Fewer merges are learned if the text runs out of pairs that occur twice (the stop rule).
        """
        minimum = 256 + len(special_tokens)
        if vocab_size < minimum:
            raise ValueError(f"vocab_size={vocab_size} must be at least {minimum} "
                             f"(256 bytes + {len(special_tokens)} special tokens)")
        if len(set(special_tokens)) != len(special_tokens) or "" in special_tokens:
            raise ValueError(f"special_tokens={special_tokens!r} must be distinct, non-empty")
        splitter = regex.compile(pattern) if pattern is not None else None
        chunks: Counter[bytes] = Counter()
        for part in _split_on_special(text, special_tokens)[::2]:  # the ordinary text
            pieces = splitter.findall(part) if splitter else [part]
            chunks.update(piece.encode("utf-8") for piece in pieces if piece)
        merges = learn_merges(chunks, vocab_size - minimum)
        vocab = vocab_from_merges(merges)
        specials = {token: len(vocab) + i for i, token in enumerate(special_tokens)}
        vocab.update({token_id: token.encode("utf-8") for token, token_id in specials.items()})
        return cls(vocab, merges, pattern=pattern, special_tokens=specials)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, allowed_special: str | set[str] = "none_raise") -> list[int]:
        """Text -> ids. `allowed_special` says what to do with special tokens in `text`:
        "all": encode each as its id; "none": encode them as ordinary text; "none_raise"
        (default): raise ValueError if one occurs; a set: encode those, raise for the others.
        """
        allowed = self._allowed_special(allowed_special)
        if allowed_special != "none":
            for token in sorted(self.special_tokens.keys() - allowed):
                if token in text:
                    raise ValueError(f"text contains the special token {token!r}; pass "
                                     "allowed_special='all' to encode it as its id, or 'none' "
                                     "to encode it as ordinary text")
        ids = []
        for position, part in enumerate(_split_on_special(text, allowed)):
            if position % 2:
                ids.append(self.special_tokens[part])
            else:
                ids.extend(self.encode_ordinary(part))
        return ids

    def _allowed_special(self, allowed_special: str | set[str]) -> set[str]:
        if isinstance(allowed_special, (set, frozenset)):
            unknown = allowed_special - self.special_tokens.keys()
            if unknown:
                raise ValueError(f"allowed_special has unknown tokens {sorted(unknown)}; "
                                 f"the special tokens are {sorted(self.special_tokens)}")
            return set(allowed_special)
        if allowed_special in ("all", "none", "none_raise"):
            return set(self.special_tokens) if allowed_special == "all" else set()
        raise ValueError(f"allowed_special={allowed_special!r} must be 'all', 'none', "
                         "'none_raise' or a set of special tokens")

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, treating special tokens as ordinary text."""
        ids: list[int] = []
        for chunk in self._splitter.findall(text) if self._splitter else [text]:
            ids.extend(self._encode_chunk(chunk))
        return ids

    def _encode_chunk(self, chunk: str) -> list[int]:
        """Apply merges to one chunk, always the lowest-rank pair present first (cached)."""
        if chunk in self._cache:
            return self._cache[chunk]
        ids = [self._byte_ids[byte] for byte in chunk.encode("utf-8")]
        not_a_merge = len(self._ranks)
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self._ranks.get(p, not_a_merge))
            if pair not in self._ranks:
                break
            ids = merge(ids, pair, self.merges[pair])
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[chunk] = ids
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the exact bytes they stand for."""
        try:
            return b"".join(self.vocab[int(token_id)] for token_id in ids)
        except KeyError as error:
            raise ValueError(f"token id {error.args[0]} is not in the vocabulary "
                             f"(valid ids: 0..{self.vocab_size - 1})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; bytes that are not valid UTF-8 (a character cut in two) become '\ufffd'."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        """Write GPT-2's vocab.json and merges.txt, plus our pattern and special tokens."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        byte_to_char = bytes_to_unicode()
        special_ids = {token_id: token for token, token_id in self.special_tokens.items()}
        strings = {token_id: special_ids.get(token_id) or "".join(byte_to_char[b] for b in token)
                   for token_id, token in self.vocab.items()}
        if len(set(strings.values())) < len(strings):
            raise ValueError("two tokens have the same bytes; GPT-2's vocab.json cannot hold both")
        vocab_json = {string: token_id for token_id, string in strings.items()}
        merge_lines = "".join(f"{strings[left]} {strings[right]}\n" for left, right in self.merges)
        config = {"pattern": self.pattern, "special_tokens": list(self.special_tokens)}
        (directory / "vocab.json").write_text(json.dumps(vocab_json, ensure_ascii=False), "utf-8")
        (directory / "merges.txt").write_text("#version: 0.2\n" + merge_lines, "utf-8")
        (directory / CONFIG_FILE).write_text(json.dumps(config), "utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> "BPETokenizer":
        """Read a directory written by `save`. Without our config file (GPT-2's own files),
        GPT-2's pattern and the special token "<|endoftext|>" are assumed."""
        directory = Path(directory)
        config = {"pattern": GPT2_SPLIT_PATTERN, "special_tokens": ["<|endoftext|>"]}
        if (directory / CONFIG_FILE).exists():
            config = _read_json(directory / CONFIG_FILE)
        return cls.from_gpt2_files(directory / "vocab.json", directory / "merges.txt",
                                   special_tokens=config.get("special_tokens", ()),
                                   pattern=config.get("pattern", GPT2_SPLIT_PATTERN))

    @classmethod
    def from_gpt2_files(cls, vocab_path: str | Path, merges_path: str | Path, *,
                        special_tokens: Sequence[str] = ("<|endoftext|>",),
                        pattern: str | None = GPT2_SPLIT_PATTERN) -> "BPETokenizer":
        """Read GPT-2-format files: vocab.json {token string: id} and merges.txt ("a b" lines
        in rank order), as published with GPT-2 or written by Hugging Face `tokenizers`.
        Tokens are written with `bytes_to_unicode` characters; special tokens as plain text."""
        string_to_id = _read_json(vocab_path)
        missing = [token for token in special_tokens if token not in string_to_id]
        if missing:
            raise ValueError(f"{vocab_path}: has no special tokens {missing}; "
                             "pass special_tokens=() if there are none")
        char_to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
        vocab: dict[int, bytes] = {}
        for string, token_id in string_to_id.items():
            if not isinstance(token_id, int) or token_id in vocab:
                raise ValueError(f"{vocab_path}: token {string!r} has id {token_id!r}, "
                                 "which is not an int or is already taken")
            if string in special_tokens:
                vocab[token_id] = string.encode("utf-8")
            elif all(char in char_to_byte for char in string):
                vocab[token_id] = bytes(char_to_byte[char] for char in string)
            else:
                raise ValueError(f"{vocab_path}: token {string!r} is not in GPT-2's byte alphabet")
        merges = _read_merges(merges_path, string_to_id)
        specials = {token: string_to_id[token] for token in special_tokens}
        try:
            return cls(vocab, merges, pattern=pattern, special_tokens=specials)
        except ValueError as error:
            raise ValueError(f"{vocab_path}: {error}") from None


def _read_json(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_merges(path: str | Path, string_to_id: Mapping[str, int]) -> dict[tuple[int, int], int]:
    """merges.txt -> {(left_id, right_id): new_id} in file order, which is rank order."""
    merges: dict[tuple[int, int], int] = {}
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    for line_number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line or (line_number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path} line {line_number}: expected two tokens separated by "
                             f"one space, got {line!r}")
        for string in (*parts, parts[0] + parts[1]):
            if string not in string_to_id:
                raise ValueError(f"{path} line {line_number}: token {string!r} is not in the vocab")
        pair = (string_to_id[parts[0]], string_to_id[parts[1]])
        if pair in merges:
            raise ValueError(f"{path} line {line_number}: merge {line!r} appears twice")
        merges[pair] = string_to_id[parts[0] + parts[1]]
    return merges

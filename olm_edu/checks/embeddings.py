"""Checks for lesson 02 — Embeddings and positions.

Tolerances: an embedding lookup copies numbers, so a one-hot product or a table lookup is
exact up to float32 rounding (atol 1e-6). The sinusoidal table is compared at atol 1e-3:
an angle t / 10000^(2i/d) computed in float32 at position t ~ 1000 is off by about 1e-4,
while every real mistake (sin and cos swapped, a wrong exponent) is off by order 1.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from olm_edu.grading import Check, CheckFailed, exercise
from olm_edu.nn import positions as library_positions

_reference_table = library_positions.sinusoidal_table

# Ways to read rows of a matrix without a one-hot product.
_LOOKUPS = {"__getitem__", "index_select", "embedding", "gather", "take", "take_along_dim"}


class _WatchCalls(TorchFunctionMode):
    """Record the torch functions the learner's code calls, and lookups into `watched`."""

    def __init__(self, watched: torch.Tensor | None = None):
        super().__init__()
        self.watched = watched
        self.names: set[str] = set()
        self.lookups: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        self.names.add(name)
        if self.watched is not None and name in _LOOKUPS:
            if any(arg is self.watched for arg in (*args, *kwargs.values())):
                self.lookups.add(name)
        return func(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Exercise 1 — an embedding lookup as a one-hot product
# ---------------------------------------------------------------------------------------------


def _id_cases(check: Check) -> list[tuple[torch.Tensor, int]]:
    """(ids, vocab_size): shapes (T,), (B, T), (B, T, K); ids that never reach vocab_size - 1."""
    cases = [
        (torch.tensor([0, 3, 3, 9]), 10),
        (check.randint(0, 60, 2, 7), 70),  # the last ten ids never occur
        (check.randint(0, 5, 3, 4, 2), 5),
    ]
    if check.hidden:
        cases += [(torch.tensor([4]), 5), (check.randint(0, 1000, 4, 16), 1024),
                  (torch.zeros(2, 3, dtype=torch.long), 3)]
    return cases


@exercise("Exercise 1 — an embedding lookup as a one-hot product")
def one_hot_lookup(check: Check, one_hot: Callable, embed_one_hot: Callable) -> None:
    for ids, vocab_size in _id_cases(check):
        shape = tuple(ids.shape)
        what = f"one_hot(ids of shape {shape}, vocab_size={vocab_size})"
        with _WatchCalls() as watch:
            got = check.call(one_hot, ids.clone(), vocab_size, what=what)
        if "one_hot" in watch.names:
            check.fail(f"{what} calls torch.nn.functional.one_hot; build the one-hot vectors yourself "
                       "(compare ids[..., None] with torch.arange(vocab_size))")
        if not isinstance(got, torch.Tensor):
            check.fail(f"{what}: expected a torch.Tensor, got {type(got).__name__}")
        if got.shape[:-1] == ids.shape and got.shape[-1] != vocab_size:
            check.fail(f"{what}: expected shape {shape + (vocab_size,)}, got {tuple(got.shape)}. Hint: the "
                       "one-hot vectors have vocab_size entries, not ids.max() + 1 (a batch need not contain "
                       "the last token of the vocabulary)")
        check.expect(got.is_floating_point(), f"{what} returned dtype {got.dtype}; a one-hot vector that will be "
                     "multiplied by a float matrix must be floating point (.float())")
        expected = torch.nn.functional.one_hot(ids, vocab_size).float()
        check.close(got, expected, what=what, hint="entry v of the vector for id t is 1.0 when v == t, else 0.0")

        embed_dim = 6
        weight = check.randn(vocab_size, embed_dim)
        what = f"embed_one_hot(ids of shape {shape}, weight of shape {(vocab_size, embed_dim)})"
        with _WatchCalls(weight) as watch:
            got = check.call(embed_one_hot, ids.clone(), weight, what=what,
                             hint="one_hot(ids, weight.shape[0]) has shape (..., V) and weight (V, d)")
        if watch.lookups or "one_hot" in watch.names:
            used = "torch.nn.functional.one_hot" if "one_hot" in watch.names else sorted(watch.lookups)[0]
            used = "weight[ids]" if used == "__getitem__" else used
            check.fail(f"{what} reads rows of the weight with {used}; this exercise asks for the product "
                       "one_hot(ids, vocab_size) @ weight, using your one_hot")
        check.close(got, weight[ids], what=what,
                    hint="multiply the one-hot vectors (..., V) by the weight (V, d): one_hot(ids, V) @ weight")


# ---------------------------------------------------------------------------------------------
# Exercise 2 — token and position embeddings
# ---------------------------------------------------------------------------------------------


def _weight_of(module: nn.Module, name: str, shape: tuple[int, int], meaning: str) -> torch.Tensor:
    layer = getattr(module, name, None)
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise CheckFailed(f"GPTEmbedding has no {name} with a weight; create self.{name} = nn.Embedding({meaning})")
    if tuple(weight.shape) != shape:
        raise CheckFailed(f"{name}.weight should have shape ({meaning}) = {shape}, got {tuple(weight.shape)}")
    return weight


class ReferenceGPTEmbedding(nn.Module):
    """GPT-2's input layer as the library's models hold it (`embed` + `positions`), under Exercise 2's
    names. Shapes: ids (B, T) -> (B, T, embed_dim)."""

    def __init__(self, vocab_size: int, max_seq_len: int, embed_dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.position_embedding = library_positions.LearnedPositions(max_seq_len, embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding(torch.arange(ids.shape[1], device=ids.device))


@exercise("Exercise 2 — token and position embeddings", reference=ReferenceGPTEmbedding)
def token_and_position(check: Check, cls: type) -> None:
    # The first size has fewer tokens than positions, so looking positions up by token id runs (and is caught).
    sizes = [(12, 16, 4), (70, 8, 6)] + ([(300, 64, 32)] if check.hidden else [])
    for vocab_size, max_seq_len, embed_dim in sizes:
        call = f"GPTEmbedding(vocab_size={vocab_size}, max_seq_len={max_seq_len}, embed_dim={embed_dim})"
        module = check.call(cls, vocab_size, max_seq_len, embed_dim, what=call)
        check.expect(isinstance(module, nn.Module), f"{call} should be an nn.Module, got {type(module).__name__}")
        tokens = _weight_of(module, "token_embedding", (vocab_size, embed_dim), "vocab_size, embed_dim")
        positions = _weight_of(module, "position_embedding", (max_seq_len, embed_dim), "max_seq_len, embed_dim")
        expected_count = (vocab_size + max_seq_len) * embed_dim
        count = sum(p.numel() for p in module.parameters())
        check.expect(count == expected_count,
                     f"{call} has {count:,} parameters; the two tables hold (vocab_size + max_seq_len) * "
                     f"embed_dim = {expected_count:,} and nothing else should")
        with torch.no_grad():  # fresh values the check knows, so nothing depends on the initialisation
            tokens.copy_(check.randn(vocab_size, embed_dim))
            positions.copy_(check.randn(max_seq_len, embed_dim))
        token_rows, position_rows = tokens.detach().clone(), positions.detach().clone()

        shapes = [(2, max_seq_len - 1), (3, max_seq_len), (1, 1)]
        if check.hidden:
            shapes += [(4, 3), (max_seq_len, 2)]
        for batch, length in shapes:
            ids = check.randint(0, vocab_size, batch, length)
            ids[0, -1] = vocab_size - 1
            what = f"{call} on ids of shape {(batch, length)}"
            got = check.call(module, ids, what=what,
                             hint="positions are torch.arange(T) with T = ids.shape[1], the same for every row")
            expected = token_rows[ids] + position_rows[:length]
            mistakes = [("adds no position information: add position_embedding(torch.arange(T))", token_rows[ids])]
            if vocab_size <= max_seq_len:
                mistakes.append(("looks up the positions with the token ids; the positions are 0, 1, ..., T - 1 "
                                 "(torch.arange(T)), whatever the tokens are", token_rows[ids] + position_rows[ids]))
            if length < max_seq_len:
                mistakes.append(("numbers the positions from 1; the first token has position 0",
                                 token_rows[ids] + position_rows[1:length + 1]))
            if isinstance(got, torch.Tensor) and got.shape == expected.shape:
                for message, wrong in mistakes:
                    if not torch.allclose(wrong, expected) and torch.allclose(got.detach(), wrong, atol=1e-5):
                        check.fail(f"{what}: your module {message}")
            check.close(got, expected, what=what, atol=1e-6, rtol=1e-6,
                        hint="the output is token_embedding(ids) + position_embedding(torch.arange(T)), where "
                             "positions run along dim 1 (the sequence), 0 .. T - 1")


# ---------------------------------------------------------------------------------------------
# Exercise 3 — the sinusoidal table
# ---------------------------------------------------------------------------------------------


def _table(length: int, dim: int, *, variant: str = "right") -> torch.Tensor:
    """The sinusoidal table (float64), or one of the mistakes learners make with it."""
    t = torch.arange(length, dtype=torch.float64)[:, None]
    pair = torch.arange(dim // 2, dtype=torch.float64)
    exponent = {"no_two": pair / dim}.get(variant, 2 * pair / dim)
    frequency = 10000.0 ** (exponent if variant == "multiplied" else -exponent)
    if variant == "from_one":
        t = t + 1
    angle = t * frequency  # (T, d/2)
    sin, cos = angle.sin(), angle.cos()
    if variant == "swapped":
        sin, cos = cos, sin
    if variant == "halves":
        return torch.cat([sin, cos], dim=-1)
    table = torch.empty(length, dim, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = sin, cos
    if variant == "column_exponent":  # column j gets 10000^(-j/d): the odd columns use the wrong speed
        column = torch.arange(dim, dtype=torch.float64)
        angle = t * 10000.0 ** (-column / dim)
        table = torch.where(column.long() % 2 == 0, angle.sin(), angle.cos())
    return table


_TABLE_MISTAKES = {
    "swapped": "sin and cos are swapped: columns 0, 2, 4, ... hold sin(angle) and columns 1, 3, 5, ... "
               "hold cos(angle)",
    "no_two": "the exponent is wrong: pair i (columns 2i and 2i + 1) uses the angle t / 10000^(2i/d), "
              "with 2i in the exponent; yours looks like t / 10000^(i/d)",
    "column_exponent": "the two columns of a pair must share one frequency: columns 2i and 2i + 1 both use "
                       "t / 10000^(2i/d); yours gives column j the frequency 10000^(-j/d), so every odd "
                       "column turns at the wrong speed",
    "multiplied": "the angle is t divided by 10000^(2i/d) (frequencies from 1 down to 1/10000); yours "
                  "multiplies by it",
    "halves": "the columns must alternate: column 2i is sin and column 2i + 1 is cos of the same angle; "
              "yours puts all the sines first and all the cosines after (a layout some code uses, "
              "but not the paper's)",
    "from_one": "positions start at 0: row 0 must be sin(0) = 0 and cos(0) = 1 alternating; yours starts at 1",
}


@contextlib.contextmanager
def _library_table_refused() -> Iterator[None]:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise CheckFailed("your code calls olm_edu.nn.positions.sinusoidal_table, which is not allowed here: "
                          "this exercise asks you to compute the table yourself")

    library_positions.sinusoidal_table = refuse
    try:
        yield
    finally:
        library_positions.sinusoidal_table = _reference_table


@exercise("Exercise 3 — the sinusoidal table", reference=_reference_table)
def sinusoidal(check: Check, fn: Callable[[int, int], torch.Tensor]) -> None:
    sizes = [(16, 8), (64, 32), (200, 64)]
    if check.hidden:
        sizes += [(1, 2), (7, 6), (1024, 128)]
    for length, dim in sizes:
        what = f"sinusoidal_positions({length}, {dim})"
        with _library_table_refused():
            got = check.call(fn, length, dim, what=what)
        expected = _reference_table(length, dim)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (length, dim) and got.is_floating_point():
            error = (got.double() - expected.double()).abs()
            if not (error <= 1e-3).all():
                for variant, message in _TABLE_MISTAKES.items():
                    if torch.allclose(got.double(), _table(length, dim, variant=variant), atol=1e-3):
                        check.fail(f"{what}: {message}")
        check.close(got, expected, what=what, atol=1e-3, rtol=0,
                    hint="P[t, 2i] = sin(t / 10000^(2i/d)) and P[t, 2i + 1] = cos(t / 10000^(2i/d))")

"""Tests for olm_edu.optim: Newton–Schulz against torch.optim.Muon, the Muon/AdamW split, WSD."""

import math
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import ConstantLR, LinearLR, SequentialLR

from olm_edu.models import ModelConfig, build
from olm_edu.optim import Muon, Optimizers, lr_at_step, make_optimizer, muon_split, newton_schulz, set_lr, wsd_lr
from olm_edu.train import lr_at, train


def tiny(**changes) -> torch.nn.Module:
    cfg = ModelConfig(vocab_size=11, max_seq_len=16, embed_dim=32, num_layers=2, num_heads=2, hidden_dim=64)
    torch.manual_seed(0)
    return build(cfg.replace(**changes))


# ---------------------------------------------------------------------------
# Newton–Schulz and Muon
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 5), (5, 8), (16, 16), (64, 24)])
def test_one_muon_step_is_minus_lr_times_the_newton_schulz_of_the_gradient(shape):
    """torch.optim.Muon with no momentum and no decay: W <- W - lr * sqrt(max(1, out/in)) * NS(G)."""
    weight = torch.nn.Parameter(torch.randn(*shape))
    start = weight.detach().clone()
    weight.grad = torch.randn(*shape)
    muon = torch.optim.Muon([weight], lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False)
    muon.step()
    scale = 0.1 * math.sqrt(max(1.0, shape[0] / shape[1]))
    expected = start - scale * newton_schulz(weight.grad).to(torch.float32)
    torch.testing.assert_close(weight.detach(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_our_muon_in_bfloat16_equals_torch_muon_bit_for_bit_and_float32_stays_close(adjust_lr_fn, nesterov):
    shapes = [(24, 16), (16, 40)]
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(*shape, generator=generator) for shape in shapes]
    gradients = [[torch.randn(*shape, generator=generator) for shape in shapes] for _ in range(3)]
    settings = dict(lr=0.05, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    results = {}
    for name, make in {"torch": lambda ps: torch.optim.Muon(ps, **settings),
                       "bf16": lambda ps: Muon(ps, ns_dtype="bfloat16", **settings),
                       "fp32": lambda ps: Muon(ps, ns_dtype="float32", **settings)}.items():
        weights = [torch.nn.Parameter(w.clone()) for w in start]
        optimizer = make(weights)
        for step in gradients:
            for weight, gradient in zip(weights, step):
                weight.grad = gradient.clone()
            optimizer.step()
        results[name] = [w.detach() for w in weights]
    for ours, theirs in zip(results["bf16"], results["torch"]):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(results["fp32"], results["torch"]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0.05 * 3 * 0.02)  # bfloat16's rounding, 3 steps
        assert not torch.equal(ours, theirs)


def test_newton_schulz_pushes_every_singular_value_towards_one_and_keeps_the_singular_vectors():
    matrix = torch.randn(32, 48, dtype=torch.float64) @ torch.diag(torch.logspace(-2, 1, 48, dtype=torch.float64))
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    assert s.max() / s.min() > 100  # a badly conditioned matrix
    orthogonalised = newton_schulz(matrix, dtype=torch.float64)
    singular_values = torch.linalg.svdvals(orthogonalised)
    assert singular_values.min() > 0.5 and singular_values.max() < 1.25  # all within a small band around 1
    # the same singular vectors: U^T X V is diagonal
    core = u.T @ orthogonalised @ vh.T
    off_diagonal = core - torch.diag(torch.diagonal(core))
    assert off_diagonal.abs().max() < 1e-8
    exact = newton_schulz(matrix, steps=60, coefficients=(1.5, -0.5, 0.0), dtype=torch.float64)
    torch.testing.assert_close(exact, u @ vh, atol=1e-6, rtol=0)  # the cubic iteration converges to U V^T


# ---------------------------------------------------------------------------
# Which parameters go where
# ---------------------------------------------------------------------------


def test_muon_gets_the_hidden_matrices_and_adamw_the_embeddings_norms_biases_and_head():
    for model in (tiny(), tiny(tie_embeddings=False, position="rope", norm="rmsnorm", norm_bias=False, qk_norm=True, qkv_bias=False)):
        muon, adamw = muon_split(model)
        muon_names, adamw_names = {n for n, _ in muon}, {n for n, _ in adamw}
        assert muon_names == {n for n, p in model.named_parameters()
                              if p.dim() == 2 and n.startswith("layers.") and "norm" not in n}
        assert "embed.weight" in adamw_names
        assert all(p.dim() == 2 for _, p in muon)
        assert len(muon) + len(adamw) == len(list(model.parameters()))
    assert "head.weight" in adamw_names and "head.weight" not in muon_names  # the untied output matrix


def test_make_optimizer_muon_is_muon_plus_adamw_and_set_lr_scales_every_group():
    optimizers = make_optimizer(tiny(), "muon", lr=1e-3, muon_lr=2e-2, weight_decay=0.1)
    assert [type(o) for o in optimizers] == [Muon, torch.optim.AdamW]
    assert optimizers.param_groups[0]["ns_dtype"] == "float32"  # on the CPU
    assert isinstance(optimizers, Optimizers)
    set_lr(optimizers, 0.5)
    assert [g["lr"] for g in optimizers.param_groups] == [1e-2, 5e-4, 5e-4]
    assert [g["weight_decay"] for g in optimizers.param_groups] == [0.1, 0.1, 0.0]
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        make_optimizer(tiny(), "sgd", lr=1e-3)


# ---------------------------------------------------------------------------
# Warm-up–stable–decay
# ---------------------------------------------------------------------------


def test_wsd_equals_torch_linear_warmup_constant_then_linear_decay():
    max_lr, min_lr, warmup, total, fraction = 1e-2, 1e-3, 10, 100, 0.2
    decay = round(fraction * total)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schedule = SequentialLR(
            optimizer,
            [LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
             ConstantLR(optimizer, factor=1.0, total_iters=0),
             LinearLR(optimizer, start_factor=1 - (1 - min_lr / max_lr) / decay, end_factor=min_lr / max_lr,
                      total_iters=decay - 1)],
            milestones=[warmup, total - decay],
        )
        for step in range(total):
            got = wsd_lr(step, max_lr=max_lr, warmup_steps=warmup, total_steps=total, decay_fraction=fraction,
                         min_lr=min_lr)
            assert got == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9), step
            optimizer.step()
            schedule.step()


def test_wsd_is_flat_in_the_middle_and_reaches_min_lr_on_the_last_step():
    at = lambda step: wsd_lr(step, max_lr=1.0, warmup_steps=5, total_steps=50, decay_fraction=0.2, min_lr=0.1)
    assert at(0) == pytest.approx(0.2) and at(4) == 1.0
    assert {at(step) for step in range(5, 40)} == {1.0}
    assert at(49) == pytest.approx(0.1) and at(80) == 0.1
    assert lr_at_step("cosine", 7, max_lr=1.0, warmup_steps=5, total_steps=50, min_lr=0.1) == lr_at(
        7, max_lr=1.0, warmup_steps=5, total_steps=50, min_lr=0.1)
    with pytest.raises(ValueError, match="warmup_steps=45"):
        wsd_lr(0, max_lr=1.0, warmup_steps=45, total_steps=50, decay_fraction=0.2)
    with pytest.raises(ValueError, match="schedule='step'"):
        lr_at_step("step", 0, max_lr=1.0, warmup_steps=0, total_steps=5, min_lr=0.0)


# ---------------------------------------------------------------------------
# The recipe in the training loop
# ---------------------------------------------------------------------------


def test_train_with_muon_wsd_and_z_loss_learns_and_the_z_loss_shrinks_the_log_partition():
    data = torch.arange(2000) % 11
    results = {}
    for z in (0.0, 1.0):
        model = tiny()
        history = train(model, data, data, steps=25, batch_size=4, block_size=12, max_lr=2e-2, optimizer="muon",
                        schedule="wsd", z_loss=z, eval_every=25, eval_batches=2, device="cpu", progress=False)
        with torch.no_grad():
            logits = model(data[:12][None])
        results[z] = history.val_loss[-1], torch.logsumexp(logits, -1).abs().mean().item()
        assert history.val_loss[-1] < 0.3 * history.val_loss[0]
    assert results[1.0][1] < 0.5 * results[0.0][1]

"""Tests for olm_edu.train: the schedule, clipping, parameter groups, the loop (all tiny, a few seconds)."""

import math
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from olm_edu import train as training
from olm_edu.models import ModelConfig, build
from olm_edu.train import (
    TrainingHistory,
    clip_gradients,
    estimate_loss,
    lr_at,
    make_optimizer,
    next_token_loss,
    pick_device,
    train,
    weight_decay_groups,
)

VOCAB = 5


def tiny_model(seed: int = 0, **changes) -> torch.nn.Module:
    cfg = ModelConfig(vocab_size=VOCAB, max_seq_len=16, embed_dim=32, num_layers=1, num_heads=2, hidden_dim=64)
    torch.manual_seed(seed)
    return build(cfg.replace(**changes))


def repeating_stream(length: int = 1000) -> torch.Tensor:
    """0 1 2 3 4 0 1 2 ...: each token fixes the next, so a model can drive the loss towards 0."""
    return torch.arange(length) % VOCAB


# ---------------------------------------------------------------------------
# lr_at
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("warmup_steps, total_steps", [(10, 100), (3, 40), (1, 7)])
def test_lr_at_follows_linear_warmup_then_cosine_at_its_key_steps(warmup_steps, total_steps):
    max_lr, min_lr = 3e-3, 3e-4
    at = lambda step: lr_at(step, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr)
    assert at(0) == pytest.approx(max_lr / warmup_steps)  # the first step already learns
    assert at(warmup_steps - 1) == pytest.approx(max_lr)  # the warm-up ends at max_lr
    assert at(warmup_steps) == pytest.approx(max_lr)  # the decay starts there
    middle = (warmup_steps + total_steps) / 2
    if middle == int(middle):
        assert at(int(middle)) == pytest.approx((max_lr + min_lr) / 2)
    assert at(total_steps) == pytest.approx(min_lr)
    assert at(total_steps + 50) == pytest.approx(min_lr)  # stays there, no climbing back up
    decay = [at(step) for step in range(warmup_steps, total_steps + 1)]
    assert all(later <= earlier for earlier, later in zip(decay, decay[1:]))


def test_lr_at_equals_torch_linear_warmup_then_cosine_annealing():
    """An independent reference: torch's LinearLR followed by CosineAnnealingLR."""
    max_lr, min_lr, warmup_steps, total_steps = 1e-3, 1e-4, 10, 100
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()" is not our concern
        schedule = SequentialLR(
            optimizer,
            [LinearLR(optimizer, start_factor=1 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1),
             CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=min_lr)],
            milestones=[warmup_steps],
        )
        for step in range(total_steps + 1):
            expected = optimizer.param_groups[0]["lr"]
            got = lr_at(step, max_lr=max_lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr)
            assert got == pytest.approx(expected, rel=1e-9), step
            optimizer.step()
            schedule.step()


def test_lr_at_without_warmup_starts_at_max_lr():
    assert lr_at(0, max_lr=1.0, warmup_steps=0, total_steps=10, min_lr=0.0) == 1.0
    assert lr_at(10, max_lr=1.0, warmup_steps=0, total_steps=10, min_lr=0.0) == pytest.approx(0.0, abs=1e-12)


def test_lr_at_rejects_a_warmup_longer_than_the_run():
    with pytest.raises(ValueError, match="warmup_steps=20"):
        lr_at(0, max_lr=1.0, warmup_steps=20, total_steps=10)


# ---------------------------------------------------------------------------
# Loss, clipping, parameter groups
# ---------------------------------------------------------------------------


def test_next_token_loss_is_mean_cross_entropy_over_all_positions():
    logits = torch.randn(3, 4, VOCAB)
    targets = torch.randint(0, VOCAB, (3, 4))
    log_probs = logits.log_softmax(-1)
    by_hand = -torch.stack([log_probs[b, t, targets[b, t]] for b in range(3) for t in range(4)]).mean()
    torch.testing.assert_close(next_token_loss(logits, targets), by_hand)


def _model_with_gradients(scale: float) -> torch.nn.Module:
    model = tiny_model()
    inputs = repeating_stream(16)[None]
    (next_token_loss(model(inputs), inputs.roll(-1, dims=1)) * scale).backward()
    return model


@pytest.mark.parametrize("max_norm", [0.01, 0.5, 1e6])
def test_clip_gradients_matches_torch_clip_grad_norm(max_norm):
    ours, theirs = _model_with_gradients(100.0), _model_with_gradients(100.0)
    norm = clip_gradients(ours.parameters(), max_norm)
    expected_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
    assert norm == pytest.approx(expected_norm.item(), rel=1e-5)
    for mine, reference in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-5, atol=1e-8)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ours.parameters()]))
    assert after <= max_norm * (1 + 1e-5) or max_norm > norm  # bounded, or untouched when already small
    if max_norm > norm:
        assert after.item() == pytest.approx(norm, rel=1e-6)


def test_train_clips_every_step_to_grad_clip(monkeypatch):
    after_clipping = []

    def spy(parameters, max_norm):
        parameters = list(parameters)
        before = clip_gradients(parameters, max_norm)
        after_clipping.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters])).item())
        return before

    monkeypatch.setattr(training, "clip_gradients", spy)
    history = train(tiny_model(), repeating_stream(), steps=10, batch_size=4, block_size=8, max_lr=1e-2,
                    grad_clip=0.05, device="cpu", progress=False)
    assert len(after_clipping) == 10
    assert max(after_clipping) <= 0.05 * (1 + 1e-5)
    assert max(history.grad_norm) > 0.05  # the bound did bite: the norms before clipping were larger


def test_weight_decay_groups_decay_matrices_and_embeddings_but_not_biases_or_norms():
    model = tiny_model()
    decay, no_decay = weight_decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): name for name, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert "embed.weight" in decayed and "positions.weight" in decayed  # the token embedding is also the tied head
    assert {"layers.0.attn.attention.q_proj.weight", "layers.0.ffn.mlp.down_proj.weight"} <= decayed
    assert all(name.endswith("bias") or ".norm." in name or name.startswith("norm.") for name in not_decayed)
    assert "layers.0.attn.norm.weight" in not_decayed and "norm.bias" in not_decayed
    assert decayed.isdisjoint(not_decayed) and decayed | not_decayed == set(names.values())
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))  # tied weight once


def test_make_optimizer_is_adamw_with_both_groups():
    optimizer = make_optimizer(tiny_model(), lr=1e-3, weight_decay=0.2)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.2, 0.0]
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def test_training_drives_the_loss_down_on_a_repeating_sequence():
    model, data = tiny_model(), repeating_stream()
    history = train(model, data, data, steps=80, batch_size=8, block_size=12, max_lr=1e-2, eval_every=20,
                    eval_batches=2, device="cpu", progress=False)
    assert history.val_steps == [0, 20, 40, 60, 80]
    assert history.val_loss[0] > 1.0  # about log(5) before training
    assert history.val_loss[-1] < 0.1 < history.val_loss[0]
    assert sum(history.train_loss[-10:]) / 10 < 0.2 * sum(history.train_loss[:10]) / 10
    assert history.steps == list(range(1, 81)) and len(history.lr) == len(history.grad_norm) == 80
    assert history.tokens == 80 * 8 * 12 and history.tokens_per_second > 0


def test_train_follows_the_schedule_and_records_gradient_norms_without_clipping():
    history = train(tiny_model(), repeating_stream(), steps=20, batch_size=2, block_size=4, max_lr=1e-2,
                    warmup_steps=5, min_lr=1e-3, grad_clip=None, device="cpu", progress=False)
    assert history.lr == [lr_at(step, max_lr=1e-2, warmup_steps=5, total_steps=20, min_lr=1e-3) for step in range(20)]
    assert all(math.isfinite(norm) and norm > 0 for norm in history.grad_norm)


def test_train_is_deterministic_given_the_seed():
    data = torch.randint(0, VOCAB, (2000,), generator=torch.Generator().manual_seed(0))
    runs = []
    for seed in (7, 7, 8):
        model = tiny_model(dropout=0.1)
        history = train(model, data, data, steps=15, batch_size=4, block_size=8, max_lr=3e-3, eval_every=5,
                        eval_batches=2, seed=seed, device="cpu", progress=False)
        runs.append((history, model.state_dict()))
    (first, first_weights), (second, second_weights), (other, _) = runs
    assert first.train_loss == second.train_loss and first.val_loss == second.val_loss
    assert all(torch.equal(first_weights[name], second_weights[name]) for name in first_weights)
    assert first.train_loss != other.train_loss


def test_train_leaves_the_global_random_state_alone():
    model = tiny_model()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(model, repeating_stream(), steps=3, batch_size=2, block_size=4, max_lr=1e-3, device="cpu",
          progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_estimate_loss_uses_the_same_batches_and_restores_the_mode():
    model, data = tiny_model(dropout=0.2), torch.randint(0, VOCAB, (500,))
    model.train()
    first = estimate_loss(model, data, batch_size=4, block_size=8, num_batches=3, seed=1)
    second = estimate_loss(model, data, batch_size=4, block_size=8, num_batches=3, seed=1)
    assert first == second  # same batches, and no dropout in eval mode
    assert model.training
    assert first == pytest.approx(math.log(VOCAB), abs=0.5)  # an untrained model is close to uniform


def test_pick_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cpu") == torch.device("cpu")


def test_live_plot_does_nothing_outside_a_notebook():
    plot = training.LivePlot()
    assert not plot.enabled
    plot.update(TrainingHistory(steps=[1], train_loss=[1.0]))  # no figure, no error


# ---------------------------------------------------------------------------
# Mixture-of-experts models: the trainer adds aux_loss() and updates the router biases
# ---------------------------------------------------------------------------

MOE = dict(num_experts=4, experts_per_token=2, expert_hidden_dim=16, activation="silu", ffn="glu")


def test_train_adds_the_models_aux_loss_to_the_loss_it_backpropagates(monkeypatch):
    model = tiny_model(**MOE, load_balance_coef=0.5, router_z_loss_coef=0.01)
    seen = []
    real = type(model).aux_loss

    def spy(self):
        value = real(self)
        seen.append(value)
        return value

    monkeypatch.setattr(type(model), "aux_loss", spy)
    history = train(model, repeating_stream(), steps=3, batch_size=4, block_size=8, max_lr=1e-3,
                    progress=False, device="cpu")
    assert len(seen) == 3 and all(value.requires_grad for value in seen)
    assert history.aux_loss == pytest.approx([value.item() for value in seen])
    assert all(value > 0 for value in history.aux_loss)  # 0.5 * balance loss >= 0.5 * top_k > 0
    # the router gets a gradient from the balance loss even with the LM loss switched off
    model.zero_grad()
    inputs = repeating_stream(32).view(4, 8)
    model(inputs)
    model.aux_loss().backward()
    assert model.moe_layers()[0].router.weight.grad.abs().sum() > 0


def test_train_records_zero_aux_loss_for_a_dense_model_and_works_for_plain_modules():
    history = train(tiny_model(), repeating_stream(), steps=2, batch_size=2, block_size=8, max_lr=1e-3,
                    progress=False, device="cpu")
    assert history.aux_loss == [0.0, 0.0]
    plain = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 8), torch.nn.Linear(8, VOCAB))  # no aux_loss()
    history = train(plain, repeating_stream(), steps=2, batch_size=2, block_size=8, max_lr=1e-3,
                    progress=False, device="cpu")
    assert history.aux_loss == [0.0, 0.0]


def test_train_updates_the_selection_bias_once_per_step_for_aux_loss_free_routers():
    model = tiny_model(**MOE, router_scoring="sigmoid", router_selection_bias=True, router_bias_update_rate=0.01)
    calls = []
    real = type(model).update_router_biases
    model.update_router_biases = lambda *a: (calls.append(1), real(model, *a))
    biases = [layer.router.selection_bias.clone() for layer in model.moe_layers()]
    assert all(bias.abs().sum() == 0 for bias in biases)
    train(model, repeating_stream(), steps=5, batch_size=4, block_size=8, max_lr=1e-3, progress=False, device="cpu")
    assert len(calls) == 5
    moved = [layer.router.selection_bias for layer in model.moe_layers()]
    assert all(bias.abs().sum() > 0 for bias in moved), "the load-driven update moved the bias"
    # sign updates of size rate: every entry is a multiple of 0.01 and at most 5 steps away from 0
    for bias in moved:
        steps = bias / 0.01
        torch.testing.assert_close(steps, steps.round(), atol=1e-4, rtol=0)
        assert steps.abs().max() <= 5


def test_runs_with_different_seeds_are_scored_on_the_same_batches_given_one_eval_seed():
    val = torch.randint(0, VOCAB, (500,), generator=torch.Generator().manual_seed(9))
    histories = {}
    for seed, eval_seed in [(1, 0), (2, 0), (2, None)]:
        model = tiny_model(seed=5)  # the same weights every time
        histories[seed, eval_seed] = train(model, repeating_stream(), val, steps=1, batch_size=2, block_size=8,
                                           max_lr=0.0, seed=seed, eval_seed=eval_seed, progress=False, device="cpu")
    first = lambda h: h.val_loss[0]  # measured before any step, so only the batches differ
    assert first(histories[1, 0]) == first(histories[2, 0])
    assert first(histories[2, None]) != first(histories[2, 0])  # by default the training seed picks them


# ---------------------------------------------------------------------------
# Training for a wall-time budget (lesson 26's race)
# ---------------------------------------------------------------------------


class SteppingClock:
    """Stands in for the `time` module: perf_counter() advances `tick` seconds at every call.

    train reads it once before and once after each step, so every step takes `tick` seconds."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def test_a_time_budget_stops_on_wall_time_and_lays_the_schedule_and_evaluations_over_it(monkeypatch):
    monkeypatch.setattr(training, "time", SteppingClock(0.25))  # 40 steps of 0.25 s fit in 10 s
    history = train(tiny_model(), repeating_stream(), repeating_stream(), steps=20, batch_size=2, block_size=4,
                    max_lr=1e-2, warmup_steps=4, min_lr=1e-3, eval_every=5, eval_batches=1, time_budget=10.0,
                    device="cpu", progress=False)
    assert history.steps == list(range(1, 41)) and history.seconds == 10.0
    # before step k, 0.25 k seconds are spent: the schedule's clock reads 20 x 0.25 k / 10 = k / 2
    assert history.lr == [lr_at(k // 2, max_lr=1e-2, warmup_steps=4, total_steps=20, min_lr=1e-3) for k in range(40)]
    assert history.val_steps == [0, 10, 20, 30, 40]  # every 5 steps of the grid = every 2.5 s


def test_a_time_budget_gives_slower_steps_fewer_steps_and_the_same_schedule_shape(monkeypatch):
    lrs = {}
    for tick in (0.25, 0.5):
        monkeypatch.setattr(training, "time", SteppingClock(tick))
        history = train(tiny_model(), repeating_stream(), steps=10, batch_size=2, block_size=4, max_lr=1e-2,
                        schedule="wsd", warmup_steps=2, decay_fraction=0.4, min_lr=0.0, time_budget=10.0,
                        device="cpu", progress=False)
        lrs[tick] = history.lr
    assert len(lrs[0.25]) == 2 * len(lrs[0.5]) == 40
    assert lrs[0.25][::2] == lrs[0.5]
    assert lrs[0.25][-1] == lrs[0.5][-1] == 0.0  # both end their decay, at min_lr, as the budget runs out  # the same learning rate at the same fraction of the budget


def test_a_time_budget_on_the_real_clock_ends_just_after_the_budget():
    history = train(tiny_model(), repeating_stream(), steps=100, batch_size=2, block_size=4, max_lr=1e-2,
                    time_budget=0.3, device="cpu", progress=False)
    last_step = history.seconds / len(history.steps) * 20  # generous: a step is far shorter than this
    assert 0.3 <= history.seconds < 0.3 + last_step


@pytest.mark.parametrize("budget", [0, -1.0])
def test_train_rejects_a_time_budget_that_is_not_positive(budget):
    with pytest.raises(ValueError, match="time_budget"):
        train(tiny_model(), repeating_stream(), steps=5, batch_size=2, block_size=4, max_lr=1e-2, time_budget=budget,
              device="cpu", progress=False)

"""Mixture of experts: the router variants against transformers' routers, the two expert paths,
the balancing losses and the aux-loss-free bias, and the auxiliary-loss API a training loop uses."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from olm_edu.models import ModelConfig, build
from olm_edu.nn import (
    ClassicMoEFFN,
    Experts,
    GatedFFN,
    MoE,
    Residual,
    RMSNorm,
    Router,
    SwiGLUMoEFFN,
    load_balancing_loss,
    router_z_loss,
)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def by_expert(experts: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each token's (expert, weight) pairs by expert: the order of the top-k is irrelevant."""
    order = experts.argsort(dim=-1)
    return experts.gather(-1, order), weights.gather(-1, order)


# -- the router against transformers' routers ---------------------------------------------------


def hf_config(model_type: str, **values):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoConfig.for_model(model_type=model_type, hidden_size=16, num_attention_heads=4, **values)


def assert_same_routing(ours: Router, theirs: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        routing = ours(x)
        _, their_weights, their_experts = theirs(x)
    got, expected = by_expert(routing.experts, routing.weights), by_expert(their_experts, their_weights.float())
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1], rtol=1e-6, atol=1e-7)


def test_softmax_top_k_renormalised_router_is_mixtrals():
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    theirs = MixtralTopKRouter(hf_config("mixtral", num_local_experts=8, num_experts_per_tok=2))
    ours = Router(16, 8, 2, scoring="softmax", renormalize=True)
    ours.weight.data.copy_(theirs.weight.data.normal_())
    assert_same_routing(ours, theirs, randn(40, 16))


@pytest.mark.parametrize("renormalize", [True, False])
def test_qwen3_router_renormalises_only_with_norm_topk_prob(renormalize):
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

    config = hf_config("qwen3_moe", num_experts=8, num_experts_per_tok=3, norm_topk_prob=renormalize)
    theirs = Qwen3MoeTopKRouter(config)
    ours = Router(16, 8, 3, renormalize=renormalize)
    ours.weight.data.copy_(theirs.weight.data.normal_())
    assert_same_routing(ours, theirs, randn(40, 16, seed=1))
    if not renormalize:  # plain softmax probabilities: they sum to less than 1
        assert ours(randn(5, 16)).weights.sum(-1).lt(1).all()


@pytest.mark.parametrize("method", ["greedy", "group_limited_greedy"])
def test_deepseek_v2_router_greedy_and_group_limited(method):
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter

    config = hf_config("deepseek_v2", n_routed_experts=8, num_experts_per_tok=3, topk_method=method, n_group=4,
                       topk_group=2, routed_scaling_factor=1.5)  # fmt: skip
    theirs = DeepseekV2TopkRouter(config)
    groups = (4, 2) if method == "group_limited_greedy" else (1, 1)
    ours = Router(16, 8, 3, renormalize=False, num_groups=groups[0], groups_per_token=groups[1], scaling_factor=1.5)
    ours.weight.data.copy_(theirs.weight.data.normal_())
    assert_same_routing(ours, theirs, randn(40, 16, seed=2))


def test_deepseek_v3_router_sigmoid_bias_groups_and_scaling():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    config = hf_config("deepseek_v3", n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
                       norm_topk_prob=True, routed_scaling_factor=2.5)  # fmt: skip
    theirs = DeepseekV3TopkRouter(config)
    ours = Router(16, 16, 4, scoring="sigmoid", renormalize=True, num_groups=4, groups_per_token=2,
                  group_score="top2_sum", selection_bias=True, scaling_factor=2.5)  # fmt: skip
    ours.weight.data.copy_(theirs.weight.data.normal_())
    ours.selection_bias.copy_(theirs.e_score_correction_bias.normal_(0, 0.3))
    x = randn(64, 16, seed=3)
    assert_same_routing(ours, theirs, x)
    biased = ours(x).experts.sort(dim=-1).values
    ours.selection_bias.zero_()
    assert not torch.equal(ours(x).experts.sort(dim=-1).values, biased), "the bias must change some choices"


def test_the_selection_bias_stays_float32_in_a_bfloat16_model():
    moe = MoE(8, 4, 2, 8, scoring="sigmoid", selection_bias=True).to(torch.bfloat16)
    assert moe.router.weight.dtype == torch.bfloat16 and moe.router.selection_bias.dtype == torch.float32
    moe.train()(randn(1, 6, 8).to(torch.bfloat16))
    moe.update_bias(1e-3)
    assert moe.router.selection_bias.abs().max().item() == pytest.approx(1e-3)  # not rounded away


def test_group_limited_routing_only_chooses_inside_the_best_groups():
    router = Router(16, 8, 2, num_groups=4, groups_per_token=1)
    routing = router(randn(50, 16, seed=4))
    groups = routing.experts // 2  # 4 groups of 2 experts
    assert (groups == groups[:, :1]).all(), "both choices of a token come from its one allowed group"


# -- experts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gated", [True, False])
def test_loop_and_batched_experts_agree_with_one_feed_forward_per_token(gated):
    experts = Experts(6, 16, 24, activation="silu" if gated else "gelu_tanh", gated=gated)
    for weight in (experts.gate_proj, experts.up_proj, experts.down_proj):
        if weight is not None:
            weight.data.normal_(0, 0.3)
    x, chosen = randn(30, 16, seed=5), torch.randint(0, 6, (30, 2), generator=torch.Generator().manual_seed(0))
    chosen[:, 1] = (chosen[:, 0] + 1 + chosen[:, 1] % 5) % 6  # two different experts per token
    weights = randn(30, 2, seed=6).softmax(-1)
    expected = torch.stack([
        sum(weights[t, j] * experts.expert(int(chosen[t, j]), x[t : t + 1])[0] for j in range(2)) for t in range(30)
    ])  # fmt: skip
    torch.testing.assert_close(experts(x, chosen, weights, "loop"), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(experts(x, chosen, weights, "batched"), expected, rtol=1e-5, atol=1e-6)


def test_input_weighting_scales_the_token_before_the_expert():
    """Llama 4: expert_e(w * x) instead of w * expert_e(x); both expert paths, and it differs."""
    experts = Experts(6, 16, 24)
    for weight in (experts.gate_proj, experts.up_proj, experts.down_proj):
        weight.data.normal_(0, 0.3)
    x, chosen = randn(30, 16, seed=5), torch.randint(0, 6, (30, 1), generator=torch.Generator().manual_seed(0))
    weights = randn(30, 1, seed=6).sigmoid()
    expected = torch.stack([experts.expert(int(chosen[t, 0]), weights[t] * x[t : t + 1])[0] for t in range(30)])
    for implementation in ("loop", "batched"):
        got = experts(x, chosen, weights, implementation, weighting="input")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (experts(x, chosen, weights, "loop", weighting="output") - expected).abs().max() > 1e-2


def test_an_expert_is_the_gated_ffn_with_its_slice_of_the_weights():
    experts = Experts(3, 16, 24)
    ffn = GatedFFN(16, 24)
    for name in ("gate_proj", "up_proj", "down_proj"):
        getattr(ffn, name).weight.data.copy_(getattr(experts, name)[2])
    x = randn(5, 16)
    torch.testing.assert_close(experts.expert(2, x), ffn(x))


def test_moe_adds_the_shared_experts_to_the_routed_ones_and_composes_inside_residual():
    moe = SwiGLUMoEFFN(16, num_experts=4, top_k=2, hidden_dim=8, num_shared_experts=2)
    assert moe.shared_experts.up_proj.out_features == 2 * 8
    x = randn(2, 5, 16)
    routing = moe.router(x.reshape(-1, 16))
    routed = moe.experts(x.reshape(-1, 16), routing.experts, routing.weights)
    torch.testing.assert_close(moe(x), (routed + moe.shared_experts(x.reshape(-1, 16))).view(2, 5, 16))
    block = Residual(norm=RMSNorm(16), mlp=moe)
    assert block(x).shape == x.shape
    assert moe.last_routing.logits.shape == (10, 4) and moe.last_routing.experts.shape == (10, 2)
    torch.testing.assert_close(moe.expert_load().sum(), torch.tensor(1.0))


def test_classic_moe_alias_has_no_gate():
    moe = ClassicMoEFFN(16, num_experts=4, top_k=1, hidden_dim=32)
    assert moe.experts.gate_proj is None and moe(randn(1, 3, 16)).shape == (1, 3, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(experts_per_token=5), r"experts_per_token=5 must be in \[1, num_experts=4\]"),
        (dict(scoring="relu"), r"scoring='relu' is not one of \('softmax', 'sigmoid', 'sqrtsoftplus'\)"),
        (dict(group_score="mean"), r"group_score='mean' is not one of \('max', 'top2_sum'\)"),
        (dict(num_groups=3), "num_groups=3 must divide num_experts=4"),
        (dict(implementation="parallel"), r"implementation='parallel' is not one of \('loop', 'batched'\)"),
    ],
)
def test_moe_rejects_bad_options_by_name(kwargs, message):
    options = dict(embed_dim=8, num_experts=4, experts_per_token=2, hidden_dim=8) | kwargs
    with pytest.raises(ValueError, match=message):
        MoE(**options)


# -- balancing ---------------------------------------------------------------------------------


def test_load_balancing_loss_is_top_k_when_uniform_and_num_experts_when_collapsed():
    uniform_scores = torch.full((8, 4), 0.25)
    round_robin = torch.tensor([[i % 4, (i + 1) % 4] for i in range(8)])
    assert load_balancing_loss(uniform_scores, round_robin).item() == pytest.approx(2.0)  # k
    collapsed_scores = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).repeat(8, 1)
    always_the_same = torch.tensor([[0, 1]]).repeat(8, 1)
    assert load_balancing_loss(collapsed_scores, always_the_same).item() == pytest.approx(4.0)  # E


def test_router_z_loss_is_the_mean_squared_logsumexp():
    logits = randn(6, 5)
    assert router_z_loss(logits).item() == pytest.approx((logits.exp().sum(-1).log() ** 2).mean().item(), rel=1e-6)


def test_bias_update_makes_busy_experts_harder_to_choose_and_resets_the_count():
    moe = MoE(8, 4, 1, 8, scoring="sigmoid", selection_bias=True)
    moe.router.weight.data.zero_()
    moe.router.weight.data[0] = 1.0  # expert 0 wins for positive inputs
    moe.train()
    moe(randn(1, 20, 8).abs())
    assert moe.tokens_per_expert.tolist() == [20, 0, 0, 0]
    moe.update_bias(0.1)
    assert moe.router.selection_bias.tolist() == pytest.approx([-0.1, 0.1, 0.1, 0.1])
    assert moe.tokens_per_expert.sum() == 0
    moe.eval()
    moe(randn(1, 5, 8))
    assert moe.tokens_per_expert.sum() == 0, "evaluation forwards are not counted"
    with pytest.raises(ValueError, match="selection_bias=True"):
        MoE(8, 4, 1, 8).update_bias(0.1)


# -- the model-level API a training loop uses ----------------------------------------------------

TINY = ModelConfig(
    vocab_size=64, max_seq_len=64, embed_dim=32, num_layers=3, num_heads=4, hidden_dim=48, norm="rmsnorm",
    norm_bias=False, position="rope", ffn="glu", activation="silu", ffn_bias=False, qkv_bias=False,
    attn_out_bias=False, tie_embeddings=False, num_experts=4, experts_per_token=2, expert_hidden_dim=16,
    first_dense_layers=1, router_renormalize=True,
)  # fmt: skip


def tokens(batch: int = 8, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_aux_loss_is_zero_for_dense_models_and_the_weighted_mean_of_the_layer_losses():
    dense = build(TINY.replace(num_experts=0, experts_per_token=None, expert_hidden_dim=None, first_dense_layers=0))
    dense(tokens())
    assert dense.aux_loss().item() == 0.0 and dense.moe_layers() == []
    model = build(TINY.replace(load_balance_coef=0.01, router_z_loss_coef=0.001))
    model(tokens())
    layers = model.moe_layers()
    assert len(layers) == 2  # the first layer is dense
    expected = 0.01 * sum(m.load_balancing_loss() for m in layers) / 2 + 0.001 * sum(m.z_loss() for m in layers) / 2
    torch.testing.assert_close(model.aux_loss(), expected)
    model.aux_loss().backward()
    assert layers[0].router.weight.grad.abs().sum() > 0, "the balancing loss trains the router"
    assert model.expert_load().shape == (2, 4)


def test_a_short_training_loop_with_the_load_balancing_loss_spreads_the_load():
    torch.manual_seed(0)
    model = build(TINY.replace(load_balance_coef=1.0))
    data = tokens(seed=1)
    with torch.no_grad():  # start collapsed: every router strongly prefers expert 0
        for layer in model.moe_layers():
            layer.router.weight.zero_()
            layer.router.weight[0] = 0.5
    model(data)
    collapsed = model.expert_load().max().item()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(20):  # the loop the trainer runs: LM loss + what the model reports
        logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 64), data[:, 1:].reshape(-1)) + model.aux_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_router_biases()  # a no-op here: no selection bias
    model(data)
    assert model.expert_load().max().item() < collapsed - 0.1


def test_aux_loss_free_bias_updates_alone_spread_the_load():
    torch.manual_seed(0)
    cfg = TINY.replace(router_scoring="sigmoid", router_selection_bias=True, router_bias_update_rate=0.01)
    model = build(cfg).train()
    data = tokens(seed=2)
    with torch.no_grad():
        for layer in model.moe_layers():
            layer.router.selection_bias[0] = 0.2  # a collapsed start: every token picks expert 0
        model(data)
    before = model.expert_load().max().item()
    assert before == 0.5  # expert 0 takes one of the two choices of every token
    for _ in range(40):  # no gradient step at all: only the bias moves
        with torch.no_grad():
            model(data)
        model.update_router_biases()
    with torch.no_grad():
        model(data)
    assert model.expert_load().max().item() < before - 0.1
    assert all(layer.router.selection_bias.abs().sum() > 0 for layer in model.moe_layers())


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(experts_per_token=None), "num_experts=4 needs experts_per_token"),
        (dict(experts_per_token=5), "experts_per_token=5 must be <= num_experts=4"),
        (dict(expert_groups=3), "num_experts=4 must be divisible by expert_groups=3"),
        (dict(expert_groups=2, groups_per_token=3), "groups_per_token=3 must be <= expert_groups=2"),
        (dict(expert_groups=4, groups_per_token=1), "experts_per_token=2 is more than the groups_per_token=1"),
        (dict(router_scoring="relu"), r"router_scoring='relu' is not one of \('softmax', 'sigmoid', 'sqrtsoftplus'\)"),
        (dict(first_dense_layers=4), "first_dense_layers=4 must be <= num_layers=3"),
        (dict(num_experts=0), "experts_per_token=2 is a mixture-of-experts knob, but num_experts=0"),
        (dict(load_balance_coef=-1.0), "load_balance_coef=-1.0 must be >= 0"),
    ],
)
def test_invalid_moe_configs_fail_naming_the_knob(changes, message):
    with pytest.raises(ValueError, match=message):
        TINY.replace(**changes)

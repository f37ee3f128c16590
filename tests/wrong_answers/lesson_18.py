"""Wrong answers for lesson 18 — The ablation lab."""

_WIDTH_HEAD = (
    "def matched_hidden_dim(variant, baseline):\n"
    "    target = count_params(baseline).non_embedding\n"
    "    def count(width):\n"
    "        return count_params(variant.replace(hidden_dim=width)).non_embedding\n"
)
_SUMMARY_HEAD = (
    "def seed_summary(final_losses):\n"
    "    summary = {}\n"
    "    for name, losses in final_losses.items():\n"
)
_REAL_HEAD = (
    "def real_differences(final_losses, baseline):\n"
    "    base = final_losses[baseline]\n"
    "    result = {}\n"
    "    for name, losses in final_losses.items():\n"
    "        if name == baseline:\n"
    "            continue\n"
)
_SPEED_HEAD = "def tokens_per_second(step_seconds, batch_size, block_size, warmup):\n"

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "18_ablation_lab.ipynb": {
        "matched_hidden_dim": [
            (  # total parameters: the RoPE variant has no position table, so it is given a wider feed-forward
                "def matched_hidden_dim(variant, baseline):\n"
                "    target = count_params(baseline).total\n"
                "    def count(width):\n"
                "        return count_params(variant.replace(hidden_dim=width)).total\n"
                "    slope = count(2) - count(1)\n"
                "    exact = 1 + (target - count(1)) / slope\n"
                "    return min((math.floor(exact), math.ceil(exact)), key=lambda w: (abs(count(w) - target), w))\n",
                "you matched TOTAL parameters",
            ),
            (  # GPT-2's 4d for every feed-forward, gated or not
                "def matched_hidden_dim(variant, baseline):\n"
                "    return 4 * variant.embed_dim\n",
                "you kept the classic width 4 * embed_dim",
            ),
            (  # int() truncates
                _WIDTH_HEAD + "    slope = count(2) - count(1)\n"
                "    return int(1 + (target - count(1)) / slope)\n",
                "you rounded the solution down",
            ),
            (  # a slope of two d x h matrices per layer, as for the classic MLP
                _WIDTH_HEAD + "    slope = 2 * variant.embed_dim * variant.num_layers\n"
                "    return round(1 + (target - count(1)) / slope)\n",
                "your width solves for a feed-forward of two matrices",
            ),
        ],
        "seed_summary": [
            (
                _SUMMARY_HEAD + "        summary[name] = (statistics.mean(losses), statistics.pstdev(losses))\n"
                "    return summary\n",
                "population standard deviation (ddof=0",
            ),
            (
                _SUMMARY_HEAD + "        summary[name] = (statistics.mean(losses), statistics.variance(losses))\n"
                "    return summary\n",
                "your spread is the variance",
            ),
            (  # torch.std of one value is nan (with a warning), not an error
                _SUMMARY_HEAD + "        values = torch.tensor(losses, dtype=torch.float64)\n"
                "        summary[name] = (values.mean().item(), values.std().item())\n"
                "    return summary\n",
                "A single run cannot measure the noise",
            ),
        ],
        "real_differences": [
            (  # the first seed of each variant
                _REAL_HEAD + "        difference = losses[0] - base[0]\n"
                "        noise = statistics.stdev(losses) + statistics.stdev(base)\n"
                "        result[name] = (difference, abs(difference) > noise)\n"
                "    return result\n",
                "you compared single runs",
            ),
            (
                _REAL_HEAD + "        difference = statistics.mean(losses) - statistics.mean(base)\n"
                "        noise = statistics.pstdev(losses) + statistics.pstdev(base)\n"
                "        result[name] = (difference, abs(difference) > noise)\n"
                "    return result\n",
                "population standard deviation (ddof=0)",
            ),
            (  # only a worsening counts
                _REAL_HEAD + "        difference = statistics.mean(losses) - statistics.mean(base)\n"
                "        result[name] = (difference, difference > statistics.stdev(losses) + statistics.stdev(base))\n"
                "    return result\n",
                "an improvement is a NEGATIVE difference",
            ),
            (
                _REAL_HEAD + "        difference = statistics.mean(losses) - statistics.mean(base)\n"
                "        result[name] = (difference, abs(difference) > statistics.stdev(losses))\n"
                "    return result\n",
                "your noise counts one spread only",
            ),
        ],
        "tokens_per_second": [
            (
                _SPEED_HEAD + "    kept = step_seconds[warmup:]\n"
                "    return batch_size * block_size * len(kept) / sum(kept)\n",
                "you used the MEAN step time",
            ),
            (
                _SPEED_HEAD + "    return batch_size * (block_size + 1) / statistics.median(step_seconds[warmup:])\n",
                "batch_size * (block_size + 1)",
            ),
            (
                _SPEED_HEAD + "    return batch_size * block_size / statistics.median(step_seconds)\n",
                "warm-up steps",
            ),
            (
                _SPEED_HEAD + "    median = torch.tensor(step_seconds[warmup:]).median().item()\n"
                "    return batch_size * block_size / median\n",
                "torch.median returns the lower one",
            ),
        ],
    },
}

"""Wrong answers for lesson 25 — Beyond one device."""

_AVERAGE_HEAD = "import torch.distributed as dist\n\n\ndef average_gradients(model):\n"
_ACCUMULATE_HEAD = "def accumulate_gradients(model, inputs, targets, micro_batches):\n"
_BYTES_HEAD = "import math\n\n\ndef training_bytes(num_parameters, world_size, sharding):\n"

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "25_beyond_one_device.ipynb": {
        "average_gradients": [
            (  # the sum, never divided
                _AVERAGE_HEAD + "    for p in model.parameters():\n"
                "        if p.grad is not None:\n"
                "            dist.all_reduce(p.grad)\n",
                "the sum over the ranks",
            ),
            (  # divided but never communicated
                _AVERAGE_HEAD + "    for p in model.parameters():\n"
                "        if p.grad is not None:\n"
                "            p.grad /= dist.get_world_size()\n",
                "never all-reduced",
            ),
            (  # all_reduce of a copy: the result is thrown away
                _AVERAGE_HEAD + "    for p in model.parameters():\n"
                "        if p.grad is not None:\n"
                "            total = p.grad.clone()\n"
                "            dist.all_reduce(total)\n",
                "still this rank's own",
            ),
        ],
        "accumulate_gradients": [
            (  # losses not divided by the number of micro-batches
                _ACCUMULATE_HEAD + "    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):\n"
                "        next_token_loss(model(x), y).backward()\n",
                "micro_batches times too large",
            ),
            (  # gradients zeroed before each micro-batch
                _ACCUMULATE_HEAD + "    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):\n"
                "        model.zero_grad()\n"
                "        (next_token_loss(model(x), y) / micro_batches).backward()\n",
                "do not zero the gradients",
            ),
            (  # divided by the rows as well
                _ACCUMULATE_HEAD + "    for x, y in zip(inputs.chunk(micro_batches), targets.chunk(micro_batches)):\n"
                "        (next_token_loss(model(x), y) / micro_batches / inputs.shape[0]).backward()\n",
                "divided by the batch size",
            ),
        ],
        "training_bytes": [
            (  # every stage shards everything
                _BYTES_HEAD + "    if sharding == 'ddp':\n        return 16 * num_parameters\n"
                "    return 16 * math.ceil(num_parameters / world_size)\n",
                "only FSDP (ZeRO-3) shards the parameters",
            ),
            (  # no fp32 master copy: 8 bytes of optimiser state
                _BYTES_HEAD + "    shard = math.ceil(num_parameters / world_size)\n"
                "    n = num_parameters\n"
                "    return {'ddp': 12 * n, 'zero1': 4 * n + 8 * shard, 'zero2': 2 * n + 10 * shard,\n"
                "            'fsdp': 12 * shard}[sharding]\n",
                "an fp32 master copy",
            ),
            (  # fp32 gradients
                _BYTES_HEAD + "    shard = math.ceil(num_parameters / world_size)\n"
                "    n = num_parameters\n"
                "    return {'ddp': 18 * n, 'zero1': 6 * n + 12 * shard, 'zero2': 2 * n + 16 * shard,\n"
                "            'fsdp': 18 * shard}[sharding]\n",
                "the gradients are bf16",
            ),
        ],
    },
}

CORRECT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "25_beyond_one_device.ipynb": {
        "average_gradients": [
            # divide first, then sum: the same mean
            _AVERAGE_HEAD + "    for p in model.parameters():\n"
            "        if p.grad is not None:\n"
            "            p.grad.div_(dist.get_world_size())\n"
            "            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)\n",
            # one bucket: every gradient flattened into one tensor, one all-reduce, copied back (DDP's idea)
            _AVERAGE_HEAD + "    grads = [p.grad for p in model.parameters() if p.grad is not None]\n"
            "    flat = torch.cat([g.reshape(-1) for g in grads])\n"
            "    dist.all_reduce(flat)\n"
            "    flat /= dist.get_world_size()\n"
            "    offset = 0\n"
            "    for g in grads:\n"
            "        g.copy_(flat[offset:offset + g.numel()].view_as(g))\n"
            "        offset += g.numel()\n",
        ],
        "accumulate_gradients": [
            # each chunk's loss weighted by its share of the rows, chunks made with split
            _ACCUMULATE_HEAD + "    rows = inputs.shape[0] // micro_batches\n"
            "    for x, y in zip(inputs.split(rows), targets.split(rows)):\n"
            "        loss = next_token_loss(model(x), y)\n"
            "        (loss * x.shape[0] / inputs.shape[0]).backward()\n",
        ],
        "training_bytes": [
            # the table's formulas, one per stage
            _BYTES_HEAD + "    n, shard = num_parameters, -(-num_parameters // world_size)\n"
            "    formulas = {'ddp': 16 * n, 'zero1': 4 * n + 12 * shard, 'zero2': 2 * n + 14 * shard,\n"
            "                'fsdp': 16 * shard}\n"
            "    return formulas[sharding]\n",
        ],
    },
}

"""Wrong answers for lessons 00 and 01."""

WRONG_ANSWERS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "00_welcome.ipynb": {
        "softmax": [
            (
                "def softmax(x):\n    return x.exp() / x.exp().sum(dim=-1, keepdim=True)\n",
                "overflows to inf in float32; subtract each row's maximum",
            ),
            (
                "def softmax(x):\n    e = (x - x.max()).exp()\n    return e / e.sum()\n",
                "divide by the sum over the last dimension",
            ),
            (
                "def softmax(x):\n    return torch.nn.functional.softmax(x, dim=-1)\n",
                "your code calls torch.nn.functional.softmax, which is not allowed here",
            ),
            (
                "def softmax(x):\n    x -= x.max(dim=-1, keepdim=True).values\n"
                "    return x.exp() / x.exp().sum(dim=-1, keepdim=True)\n",
                "changed its input tensor in place",
            ),
        ],
    },
    "01_tokens.ipynb": {
        "get_pair_counts": [
            (
                "def get_pair_counts(ids):\n    return {pair: 1 for pair in zip(ids, ids[1:])}\n",
                "occurs 2 times, you counted 1",
            ),
            (
                "from collections import Counter\n\ndef get_pair_counts(ids):\n"
                "    return Counter(zip(ids, ids[2:]))\n",
                "pair each position i with i + 1",
            ),
            (
                "def get_pair_counts(ids):\n    counts = {}\n    for i in range(0, len(ids) - 1, 2):\n"
                "        pair = (ids[i], ids[i + 1])\n        counts[pair] = counts.get(pair, 0) + 1\n    return counts\n",
                "overlapping pairs count too",
            ),
        ],
        "merge": [
            (
                "def merge(ids, pair, new_id):\n    out = []\n    for i, token in enumerate(ids):\n"
                "        if i + 1 < len(ids) and (token, ids[i + 1]) == pair:\n            out.append(new_id)\n"
                "        elif i > 0 and (ids[i - 1], token) == pair:\n            continue\n"
                "        else:\n            out.append(token)\n    return out\n",
                "merge([5, 5, 5], (5, 5), 256): expected [256, 5], got [256, 256]",
            ),
            (
                "def merge(ids, pair, new_id):\n    i = 0\n    while i < len(ids) - 1:\n"
                "        if (ids[i], ids[i + 1]) == pair:\n            ids[i:i + 2] = [new_id]\n"
                "        i += 1\n    return ids\n",
                "changed the list it was given",
            ),
            (
                "def merge(ids, pair, new_id):\n    for i in range(len(ids) - 1):\n"
                "        if (ids[i], ids[i + 1]) == pair:\n            return list(ids[:i]) + [new_id] + list(ids[i + 2:])\n"
                "    return list(ids)\n",
                "expected [300, 3, 300], got [300, 3, 1, 2]",
            ),
        ],
        "train": [
            (
                "def train(ids, num_merges):\n    merges = {}\n    for step in range(num_merges):\n"
                "        counts = get_pair_counts(ids)\n        if not counts:\n            break\n"
                "        pair = max(counts, key=counts.get)\n        if counts[pair] < 2:\n            break\n"
                "        merges[pair] = 256 + step\n        ids = merge(ids, pair, 256 + step)\n    return merges\n",
                "ties going to the smallest pair",
            ),
            (
                "def train(ids, num_merges):\n    merges = {}\n    counts = get_pair_counts(ids)\n"
                "    for step in range(num_merges):\n        if not counts:\n            break\n"
                "        pair = min(counts, key=lambda p: (-counts[p], p))\n        if counts[pair] < 2:\n            break\n"
                "        merges[pair] = 256 + step\n        ids = merge(ids, pair, 256 + step)\n        del counts[pair]\n"
                "    return merges\n",
                "count pairs on the ids as merged so far",
            ),
            (
                "def train(ids, num_merges):\n    merges = {}\n    for step in range(num_merges):\n"
                "        counts = get_pair_counts(ids)\n        if not counts:\n            break\n"
                "        pair = min(counts, key=lambda p: (-counts[p], p))\n"
                "        merges[pair] = 256 + step\n        ids = merge(ids, pair, 256 + step)\n    return merges\n",
                "stop early when the most frequent pair occurs fewer than 2 times",
            ),
        ],
        "encode_decode": [
            (
                "def encode(text, merges):\n    ids = [ord(c) for c in text]\n"
                "    for pair, new_id in merges.items():\n        ids = merge(ids, pair, new_id)\n    return ids\n\n"
                "def decode(ids, merges):\n    vocab = {b: bytes([b]) for b in range(256)}\n"
                "    for (a, b), new_id in merges.items():\n        vocab[new_id] = vocab[a] + vocab[b]\n"
                "    return b''.join(vocab[i] for i in ids).decode('utf-8', errors='replace')\n",
                "start from the UTF-8 bytes",
            ),
            (
                "def encode(text, merges):\n    ids = list(text.encode('utf-8'))\n"
                "    for pair, new_id in reversed(list(merges.items())):\n        ids = merge(ids, pair, new_id)\n    return ids\n\n"
                "def decode(ids, merges):\n    vocab = {b: bytes([b]) for b in range(256)}\n"
                "    for (a, b), new_id in merges.items():\n        vocab[new_id] = vocab[a] + vocab[b]\n"
                "    return b''.join(vocab[i] for i in ids).decode('utf-8', errors='replace')\n",
                "apply the merges in the order they were learned",
            ),
            (
                "def encode(text, merges):\n    ids = list(text.encode('utf-8'))\n"
                "    for pair, new_id in merges.items():\n        ids = merge(ids, pair, new_id)\n    return ids\n\n"
                "def decode(ids, merges):\n    vocab = {b: bytes([b]) for b in range(256)}\n"
                "    for (a, b), new_id in merges.items():\n        vocab[new_id] = vocab[a] + vocab[b]\n"
                "    return b''.join(vocab[i] for i in ids).decode('utf-8')\n",
                "errors='replace'",
            ),
        ],
    },
}

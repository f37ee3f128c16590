"""Plausible wrong answers to each exercise, and what its check must say about them.

lesson file -> grade_id of the solution cell -> [(wrong source, fragment of the check's message)].
tests/test_lessons.py puts each wrong answer into the solution cell, runs the check cell, and
requires a failure whose message contains the fragment. Every exercise must appear here.
"""

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
}

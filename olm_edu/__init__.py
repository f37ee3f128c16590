"""olm_edu: the library behind the olm-edu course.

One concept per module:
- `nn`: norms, activations, feed-forwards, positions (learned, sinusoidal, RoPE and its
  scalings, ALiBi), attention (MHA/GQA/MQA, QK-norm, soft-cap, sliding window), blocks, head.
- `models`: `ModelConfig` (the knobs), `build`, presets of published models, `from_hf_config`,
  and `diff` (the knobs that differ between two configs).
- `analysis`: parameter counts, KV-cache bytes, FLOPs and weight memory, in closed form.
- `hf`: Hugging Face checkpoints (safetensors) in and out.
- `generate`: sampling and the decoding loop with a KV cache.
- `data`: the Shakespeare corpus, a character vocabulary and batching.
- `tokenizer`: byte-level BPE (train, encode, decode, GPT-2 files).
- `grading` and `checks`: exercise checks with specific feedback.
- `authoring`: turns `solutions/` into `lessons/` with nbgrader's preprocessors.
"""

__version__ = "0.1.0"

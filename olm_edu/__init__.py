"""olm_edu: the library behind the olm-edu course.

One concept per module:
- `data`: the Shakespeare corpus, a character vocabulary and batching.
- `tokenizer`: byte-level BPE (train, encode, decode, GPT-2 files).
- `grading`: exercise checks with specific feedback.
- `checks`: the checks of each lesson, built on `grading`.
- `authoring`: turns `solutions/` into `lessons/` with nbgrader's preprocessors.
"""

__version__ = "0.1.0"

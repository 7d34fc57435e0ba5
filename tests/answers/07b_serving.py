"""Recorded answers for 07b_serving: mistakes learners really make must lose points; other correct answers keep them."""
from tests.answers import Right, Wrong  # noqa: F401

ANSWERS = [
    # ------------------------------------------------------------------ load and metrics (md-07b-load)
    # ------------------------------------------------------------------ prefix caching (md-07b-prefix)
    # ------------------------------------------------------------------ speculative decoding (md-07b-spec)
    # ------------------------------------------------------------------ int8 KV cache (md-07b-int8)
]

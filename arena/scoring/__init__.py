"""Scoring: pure, validated metrics (`metrics`) and the scorer (`score`), the only code that sees
the ground truth of a run.

Same layer as `protocol`, which it may use (for `evaluate`); order inside: metrics <- score.
"""

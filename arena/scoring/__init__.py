"""Scoring: pure, validated metrics (`metrics`) and the scorer (`score`), the only code that sees
the ground truth of a run.

May import protocol (for `evaluate`) and the vocabulary; order inside: metrics <- score.
"""

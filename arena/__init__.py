"""arena: privacy attacks against split learning and the defenses against them, scored pairwise."""
__version__ = "0.1.0"

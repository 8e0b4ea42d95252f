"""rlplatform: train reinforcement-learning bots from real play."""

__version__ = "0.1.0"

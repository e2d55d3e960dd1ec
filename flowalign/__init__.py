"""flowalign: reinforcement learning and reward-guided inference for flow-matching T2I/T2V models."""

__version__ = "0.1.0"

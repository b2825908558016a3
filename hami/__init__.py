"""hami-py: a Python asyncio implementation of HAMi (GPU sharing for Kubernetes)."""

__version__ = "0.1.0"

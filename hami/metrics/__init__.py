"""Prometheus metrics shared by every role: registry, collectors, /metrics routes."""

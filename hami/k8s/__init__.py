"""Kubernetes API access (no business logic): objects, errors, client, watch, leases."""

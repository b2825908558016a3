"""Informers and stores over hami.k8s watches; annotations decoded once at ingest."""

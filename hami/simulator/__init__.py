"""Embedded cluster: in-memory API server, fake kube-scheduler, fake kubelets."""

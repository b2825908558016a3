"""Role: DRA kubelet plugin."""

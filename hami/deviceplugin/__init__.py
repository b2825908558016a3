"""Role: kubelet device plugin (node agent)."""

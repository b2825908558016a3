"""Role: vGPU monitor (per-node usage exporter)."""

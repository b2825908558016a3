"""Settings: frozen, documented configuration trees per role, and their loaders."""

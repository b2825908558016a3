"""Role: scheduler extender + admission webhook."""

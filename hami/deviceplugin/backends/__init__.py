"""GPU backends behind ``hami.deviceplugin.backend.DeviceBackend``: ``nvml`` and ``mock``."""

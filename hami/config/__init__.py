"""Settings: frozen, documented configuration trees per role, and their loaders."""

from hami.config.loader import add_settings_arguments, load_settings, parse_duration
from hami.config.settings import (
    BackoffSettings,
    InvalidSetting,
    LeaderElectionSettings,
    LoggingSettings,
    NetworkingSettings,
    Settings,
    WatchingSettings,
    setting,
)

__all__ = [
    "BackoffSettings",
    "InvalidSetting",
    "LeaderElectionSettings",
    "LoggingSettings",
    "NetworkingSettings",
    "Settings",
    "WatchingSettings",
    "add_settings_arguments",
    "load_settings",
    "parse_duration",
    "setting",
]

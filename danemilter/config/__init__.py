"""The policy file: its values (:mod:`.model`, pure) and its loader (:mod:`.loader`, YAML)."""

from __future__ import annotations

from danemilter.config.loader import (
    CACHE_KEYS,
    ConfigErrors,
    chosen_path,
    load,
    parse,
    parse_cache_section,
)
from danemilter.config.model import (
    BUILT_IN,
    DEFAULT_PATH,
    SYSTEMD_LISTEN,
    ApplyTo,
    BackendName,
    CacheSettings,
    DaneMode,
    ErrorAction,
    FailAction,
    MilterLimits,
    OcspMode,
    Policy,
    ProbeMode,
    ProbeSettings,
    ResolverSettings,
    Rule,
    Settings,
    Transport,
)

__all__ = [
    "BUILT_IN",
    "CACHE_KEYS",
    "DEFAULT_PATH",
    "SYSTEMD_LISTEN",
    "ApplyTo",
    "BackendName",
    "CacheSettings",
    "ConfigErrors",
    "DaneMode",
    "ErrorAction",
    "FailAction",
    "MilterLimits",
    "OcspMode",
    "Policy",
    "ProbeMode",
    "ProbeSettings",
    "ResolverSettings",
    "Rule",
    "Settings",
    "Transport",
    "chosen_path",
    "load",
    "parse",
    "parse_cache_section",
]

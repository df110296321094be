"""What a running service is, as metrics: `<service>_build_info{version, python} 1` and
`<service>_auth_disabled` (1 while it accepts requests without checking a key or token)."""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import CollectorRegistry, Gauge

DISTRIBUTION = "smart-grid-load-balancer"
UNKNOWN_VERSION = "0+unknown"


def package_version(distribution: str = DISTRIBUTION) -> str:
    """The installed version of the project; UNKNOWN_VERSION when it runs from a source tree
    that was never installed (the metric should still exist, so dashboards can join on it)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def register_service_info(registry: CollectorRegistry, service: str, *, auth_disabled: bool,
                          version: str | None = None) -> None:
    Gauge(f"{service}_build_info", f"The {service}'s version and Python, always 1",
          ["version", "python"], registry=registry
          ).labels(version=version or package_version(),
                   python=platform.python_version()).set(1)
    Gauge(f"{service}_auth_disabled",
          f"1 when the {service} was started without keys (--insecure-no-auth) and accepts "
          "every caller", registry=registry).set(1 if auth_disabled else 0)

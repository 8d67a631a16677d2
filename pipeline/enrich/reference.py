"""Third-party reference data shipped with parsedmarc: IP -> country/ASN/AS organisation
(ipinfo lite, MaxMind format) and AS domain -> known sending service (base reverse DNS map)."""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path


def _resources() -> Path:
    from parsedmarc import resources

    return Path(resources.__file__).parent


def ip_database_path() -> Path:
    return _resources() / "ipinfo" / "ipinfo_lite.mmdb"


def service_map_path() -> Path:
    return _resources() / "maps" / "base_reverse_dns_map.csv"


@cache
def service_map() -> dict[str, tuple[str, str]]:
    """AS (or reverse DNS base) domain -> (service name, service type)."""
    with open(service_map_path(), newline="", encoding="utf-8") as handle:
        return {row["base_reverse_dns"].strip().lower(): (row["name"], row["type"]) for row in csv.DictReader(handle)}


@cache
def ip_reader(path: str | None = None):
    import maxminddb

    return maxminddb.open_database(path or str(ip_database_path()))


def reference_version() -> str:
    """What reference data this enrichment used (the parsedmarc release that ships it)."""
    from importlib.metadata import version

    return f"parsedmarc-{version('parsedmarc')}"

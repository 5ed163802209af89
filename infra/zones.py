"""Zones a dry run can check without asking the cloud (it needs no credentials and calls
nothing, yet must refuse what the real command refuses).

`gcp`: Compute Engine's zones as published in Google's "Regions and zones" page (checked
2026-11; new zones open now and then: a real command asks `zones.list` and knows better).
`local`: the local Compute Engine's own zones (infra/local/compute/catalog.py).
"""

from __future__ import annotations

CHECKED = "2026-11"
SOURCE = "https://cloud.google.com/compute/docs/regions-zones"

_ABC = ("a", "b", "c")
GCE_REGIONS = {
    "us-central1": ("a", "b", "c", "f"), "us-east1": ("b", "c", "d"), "us-east4": _ABC, "us-east5": _ABC,
    "us-south1": _ABC, "us-west1": _ABC, "us-west2": _ABC, "us-west3": _ABC, "us-west4": _ABC,
    "northamerica-northeast1": _ABC, "northamerica-northeast2": _ABC, "northamerica-south1": _ABC,
    "southamerica-east1": _ABC, "southamerica-west1": _ABC,
    "europe-central2": _ABC, "europe-north1": _ABC, "europe-north2": _ABC, "europe-southwest1": _ABC,
    "europe-west1": ("b", "c", "d"), "europe-west2": _ABC, "europe-west3": _ABC, "europe-west4": _ABC,
    "europe-west6": _ABC, "europe-west8": _ABC, "europe-west9": _ABC, "europe-west10": _ABC, "europe-west12": _ABC,
    "me-central1": _ABC, "me-central2": _ABC, "me-west1": _ABC, "africa-south1": _ABC,
    "asia-east1": _ABC, "asia-east2": _ABC, "asia-northeast1": _ABC, "asia-northeast2": _ABC, "asia-northeast3": _ABC,
    "asia-south1": _ABC, "asia-south2": _ABC, "asia-southeast1": _ABC, "asia-southeast2": _ABC,
    "australia-southeast1": _ABC, "australia-southeast2": _ABC,
}
GCE_ZONES = tuple(f"{region}-{z}" for region, zones in GCE_REGIONS.items() for z in zones)


def known(is_local: bool) -> tuple[str, ...]:
    if is_local:
        from infra.local.compute.catalog import ZONES

        return tuple(ZONES)
    return GCE_ZONES


def check(zone: str, is_local: bool) -> str:
    """ZONE, or the same `unknown zone` UsageError the real command gives."""
    zones = known(is_local)
    if zone not in zones:
        from infra.errors import unknown

        raise unknown("zone", zone, zones)
    return zone

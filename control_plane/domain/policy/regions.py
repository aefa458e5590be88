"""Where the common cloud regions are, and the round trip between two of them.

The estimate, in milliseconds::

    rtt_ms = 2 * great_circle_km * ROUTE_FACTOR / FIBRE_KM_PER_MS + OVERHEAD_MS

Light in fibre travels at about 2/3 c (~200 km per ms); cables do not follow the great
circle, so the distance is stretched by ROUTE_FACTOR; the fixed overhead stands for
switching, queuing and the last kilometres. Virginia to Dublin comes out near 73 ms (measured
values are usually 65-80 ms). A policy overrides any pair with measured values, and declares
the regions the catalog does not know (on-prem sites) with their coordinates.
"""

from __future__ import annotations

import math

from control_plane.domain.policy.model import Policy

FIBRE_KM_PER_MS = 199.86  # 2/3 of the speed of light in vacuum
ROUTE_FACTOR = 1.3
OVERHEAD_MS = 2.0
EARTH_RADIUS_KM = 6371.0

# name: (cloud, latitude, longitude), from the providers' published locations (city level).
CATALOG: dict[str, tuple[str, float, float]] = {
    # AWS
    "us-east-1": ("aws", 39.04, -77.49),
    "us-east-2": ("aws", 39.96, -83.00),
    "us-west-1": ("aws", 37.35, -121.96),
    "us-west-2": ("aws", 45.84, -119.70),
    "ca-central-1": ("aws", 45.50, -73.57),
    "sa-east-1": ("aws", -23.55, -46.63),
    "eu-west-1": ("aws", 53.35, -6.26),
    "eu-west-2": ("aws", 51.51, -0.13),
    "eu-west-3": ("aws", 48.86, 2.35),
    "eu-central-1": ("aws", 50.11, 8.68),
    "eu-central-2": ("aws", 47.37, 8.54),
    "eu-north-1": ("aws", 59.33, 18.07),
    "eu-south-1": ("aws", 45.46, 9.19),
    "eu-south-2": ("aws", 41.65, -0.88),
    "il-central-1": ("aws", 32.09, 34.78),
    "me-south-1": ("aws", 26.07, 50.56),
    "me-central-1": ("aws", 24.45, 54.38),
    "af-south-1": ("aws", -33.92, 18.42),
    "ap-south-1": ("aws", 19.08, 72.88),
    "ap-south-2": ("aws", 17.39, 78.49),
    "ap-east-1": ("aws", 22.32, 114.17),
    "ap-northeast-1": ("aws", 35.68, 139.69),
    "ap-northeast-2": ("aws", 37.57, 126.98),
    "ap-northeast-3": ("aws", 34.69, 135.50),
    "ap-southeast-1": ("aws", 1.35, 103.82),
    "ap-southeast-2": ("aws", -33.87, 151.21),
    "ap-southeast-3": ("aws", -6.21, 106.85),
    # Google Cloud
    "us-east1": ("gcp", 33.20, -80.01),
    "us-east4": ("gcp", 39.04, -77.49),
    "us-east5": ("gcp", 39.96, -83.00),
    "us-central1": ("gcp", 41.26, -95.86),
    "us-south1": ("gcp", 32.78, -96.80),
    "us-west1": ("gcp", 45.60, -121.18),
    "us-west2": ("gcp", 34.05, -118.24),
    "us-west3": ("gcp", 40.76, -111.89),
    "us-west4": ("gcp", 36.17, -115.14),
    "northamerica-northeast1": ("gcp", 45.50, -73.57),
    "northamerica-northeast2": ("gcp", 43.65, -79.38),
    "southamerica-east1": ("gcp", -23.55, -46.63),
    "europe-west1": ("gcp", 50.47, 3.82),
    "europe-west2": ("gcp", 51.51, -0.13),
    "europe-west3": ("gcp", 50.11, 8.68),
    "europe-west4": ("gcp", 53.43, 6.83),
    "europe-west6": ("gcp", 47.37, 8.54),
    "europe-west8": ("gcp", 45.46, 9.19),
    "europe-west9": ("gcp", 48.86, 2.35),
    "europe-north1": ("gcp", 60.57, 27.19),
    "europe-central2": ("gcp", 52.23, 21.01),
    "europe-southwest1": ("gcp", 40.42, -3.70),
    "me-west1": ("gcp", 32.09, 34.78),
    "asia-east1": ("gcp", 24.07, 120.54),
    "asia-east2": ("gcp", 22.32, 114.17),
    "asia-northeast1": ("gcp", 35.68, 139.69),
    "asia-northeast3": ("gcp", 37.57, 126.98),
    "asia-south1": ("gcp", 19.08, 72.88),
    "asia-southeast1": ("gcp", 1.35, 103.70),
    "australia-southeast1": ("gcp", -33.87, 151.21),
    # Azure
    "eastus": ("azure", 37.37, -79.82),
    "eastus2": ("azure", 36.67, -78.39),
    "centralus": ("azure", 41.59, -93.62),
    "northcentralus": ("azure", 41.88, -87.63),
    "southcentralus": ("azure", 29.42, -98.49),
    "westus": ("azure", 37.78, -122.42),
    "westus2": ("azure", 47.23, -119.85),
    "westus3": ("azure", 33.45, -112.07),
    "canadacentral": ("azure", 43.65, -79.38),
    "brazilsouth": ("azure", -23.55, -46.63),
    "northeurope": ("azure", 53.35, -6.26),
    "westeurope": ("azure", 52.37, 4.90),
    "uksouth": ("azure", 51.51, -0.13),
    "francecentral": ("azure", 48.86, 2.35),
    "germanywestcentral": ("azure", 50.11, 8.68),
    "swedencentral": ("azure", 60.67, 17.14),
    "switzerlandnorth": ("azure", 47.45, 8.56),
    "norwayeast": ("azure", 59.91, 10.75),
    "uaenorth": ("azure", 25.27, 55.32),
    "southafricanorth": ("azure", -25.73, 28.22),
    "centralindia": ("azure", 18.58, 73.92),
    "southeastasia": ("azure", 1.28, 103.83),
    "eastasia": ("azure", 22.27, 114.19),
    "japaneast": ("azure", 35.68, 139.77),
    "koreacentral": ("azure", 37.57, 126.98),
    "australiaeast": ("azure", -33.86, 151.21),
}
CATALOG_CLOUDS = frozenset(cloud for cloud, _, _ in CATALOG.values())


def region_place(policy: Policy, name: str) -> tuple[str, float, float] | None:
    """(cloud, latitude, longitude) of a region the policy or the catalog knows."""
    custom = policy.regions.get(name)
    if custom is not None:
        return (custom.cloud, custom.latitude, custom.longitude)
    return CATALOG.get(name)


def known_regions(policy: Policy) -> set[str]:
    return set(CATALOG) | set(policy.regions)


def known_clouds(policy: Policy) -> set[str]:
    return set(CATALOG_CLOUDS) | {r.cloud for r in policy.regions.values()}


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a spherical Earth."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlambda = phi2 - phi1, math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def rtt_from_km(km: float) -> float:
    return 2 * km * ROUTE_FACTOR / FIBRE_KM_PER_MS + OVERHEAD_MS


def estimated_rtt_ms(policy: Policy, a: str, b: str) -> float | None:
    """Round trip between two regions: measured if the policy says, else estimated; None
    when a region is unknown (the same name twice is always the same place)."""
    measured = policy.measured_rtt_ms.get((a, b) if a <= b else (b, a))
    if measured is not None:
        return measured
    if a == b:
        return OVERHEAD_MS
    place_a, place_b = region_place(policy, a), region_place(policy, b)
    if place_a is None or place_b is None:
        return None
    return rtt_from_km(great_circle_km(place_a[1], place_a[2], place_b[1], place_b[2]))

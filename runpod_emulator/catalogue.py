"""The GPU catalogue: which GPU types exist and what they cost per GPU-hour.

Prices are the typical 2025-2026 on-demand figures from the reference (RTX 4090 at $0.69 secure and $0.34
community, and so on). Spot ("bid") prices are still reported because the SDK's ``get_gpu`` query asks for
them, although RunPod no longer rents spot pods. Pure data and arithmetic: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

HOURS_PER_MONTH = 730.0
# $/GB/month, from RunPod's pricing page (reference section 6).
VOLUME_RUNNING_USD_GB_MONTH = 0.10
VOLUME_STOPPED_USD_GB_MONTH = 0.20
CONTAINER_DISK_USD_GB_MONTH = 0.10

# The emulator's one data center and the CUDA version its hosts report. Invented values: RunPod's ids look
# like "US-KS-2"; what matters is that pods and the catalog agree on them.
DATA_CENTER_ID = "EMU-1"
DATA_CENTER_NAME = "Emulator 1"
DATA_CENTER_COUNTRY = "US"
HOST_CUDA_VERSION = "12.8"


class CloudType(StrEnum):
    ALL = "ALL"
    SECURE = "SECURE"
    COMMUNITY = "COMMUNITY"


@dataclass(frozen=True, slots=True)
class GpuType:
    id: str
    display_name: str
    memory_gb: int
    cuda_cores: int
    secure_price: float
    # None where RunPod's community cloud does not offer the type (communityCloud: false).
    community_price: float | None
    vcpu_per_gpu: int
    ram_gb_per_gpu: int
    max_gpu_count: int = 8
    # Serverless pool id; only the RTX 4090's ("ADA_24") is published (the v2 schema's example).
    pool: str | None = None

    def price(self, cloud: CloudType) -> float | None:
        """$/GPU/h for a pod deployed on this cloud; ALL deploys (and bills) as secure."""
        return self.community_price if cloud is CloudType.COMMUNITY else self.secure_price

    def spot_price(self, cloud: CloudType) -> float | None:
        base = self.price(cloud)
        return None if base is None else round(base * 0.6, 3)

    def lowest_price(self, secure_cloud: bool | None) -> float | None:
        if secure_cloud is True:
            return self.secure_price
        if secure_cloud is False:
            return self.community_price
        return min(p for p in (self.secure_price, self.community_price) if p is not None)

    def as_graphql(self) -> dict[str, object]:
        """The ``GpuType`` object with every field the SDK's ``get_gpu`` query selects (except lowestPrice)."""
        return {
            "id": self.id,
            "displayName": self.display_name,
            "manufacturer": "Nvidia",
            "memoryInGb": self.memory_gb,
            "cudaCores": self.cuda_cores,
            "maxGpuCount": self.max_gpu_count,
            "secureCloud": True,
            "communityCloud": self.community_price is not None,
            "securePrice": self.secure_price,
            "communityPrice": self.community_price,
            # Savings-plan prices: the discount ratios RunPod's console shows.
            "oneWeekPrice": round(self.secure_price * 0.95, 3),
            "oneMonthPrice": round(self.secure_price * 0.9, 3),
            "threeMonthPrice": round(self.secure_price * 0.85, 3),
            "secureSpotPrice": self.spot_price(CloudType.SECURE),
            "communitySpotPrice": self.spot_price(CloudType.COMMUNITY),
        }


CATALOGUE: tuple[GpuType, ...] = (
    GpuType("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 16384, 0.69, 0.34, 6, 41, pool="ADA_24"),
    GpuType("NVIDIA GeForce RTX 3090", "RTX 3090", 24, 10496, 0.43, 0.22, 4, 31),
    GpuType("NVIDIA L4", "L4", 24, 7424, 0.43, None, 6, 50),
    GpuType("NVIDIA A40", "A40", 48, 10752, 0.44, 0.35, 9, 50),
    GpuType("NVIDIA RTX A6000", "RTX A6000", 48, 10752, 0.49, 0.33, 8, 50),
    GpuType("NVIDIA L40S", "L40S", 48, 18176, 0.86, 0.79, 12, 62),
    GpuType("NVIDIA A100 80GB PCIe", "A100 80GB", 80, 6912, 1.89, 1.64, 8, 117),
    GpuType("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 16896, 2.99, 2.69, 16, 125),
)

BY_ID: dict[str, GpuType] = {g.id: g for g in CATALOGUE}


def storage_usd_per_hour(volume_gb: float, container_disk_gb: float, running: bool) -> float:
    """Storage cost rate of one pod: volume at the running or stopped rate, container disk only while running."""
    if running:
        per_month = volume_gb * VOLUME_RUNNING_USD_GB_MONTH + container_disk_gb * CONTAINER_DISK_USD_GB_MONTH
    else:
        per_month = volume_gb * VOLUME_STOPPED_USD_GB_MONTH
    return per_month / HOURS_PER_MONTH

"""What the settings learn from the real timeline: per device and cloud, how far the predictions were off.

Like the correction factors of Dynamo's SLA planner, each finished pd request compares what the settings
predicted with what happened -- the cloud's first token (TTFT) and its time between tokens -- and folds the
ratio into a running factor (an exponential average, so a changed cloud is learnt within a few requests).
The next request's settings scale the cloud estimate by them before they choose k, the pace and whether to
use the cloud at all. The factors are stored beside the device's measured profiles
(``<cache>/profiles/corrections.json``), keyed by the device profile's name and the cloud's URL.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pdlink.common.models import cache_root

_ALPHA = 0.5  # weight of the newest request
_LIMITS = (0.1, 20.0)  # a factor outside this says more about a broken run than about the cloud


@dataclass(frozen=True)
class Correction:
    """Measured / predicted for one device and cloud (1.0: the predictions were right)."""

    cloud_ttft: float = 1.0
    cloud_tpot: float = 1.0
    requests: int = 0

    def apply(self, cloud):
        """The ``CloudEstimate`` as corrected: the TTFT through the prefill speed, the decode through tpot."""
        if self.requests == 0:
            return cloud
        return replace(cloud, prefill_tok_s=cloud.prefill_tok_s / self.cloud_ttft, tpot_s=cloud.tpot_s * self.cloud_tpot)

    def learn(self, ttft_ratio: float | None, tpot_ratio: float | None) -> "Correction":
        """This correction after one more request's ratios (None: not measured in that request)."""
        def fold(old: float, ratio: float | None) -> float:
            if ratio is None or not math.isfinite(ratio) or ratio <= 0:
                return old
            ratio = min(max(ratio * old, _LIMITS[0]), _LIMITS[1])  # the ratio was measured against a corrected estimate
            return ratio if self.requests == 0 else (1 - _ALPHA) * old + _ALPHA * ratio
        return Correction(fold(self.cloud_ttft, ttft_ratio), fold(self.cloud_tpot, tpot_ratio), self.requests + 1)


def corrections_path() -> Path:
    """The store: beside the measured device profiles."""
    return cache_root() / "profiles" / "corrections.json"


class CorrectionStore:
    """Corrections per (device profile, cloud URL), read and written as one small JSON file."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else corrections_path()

    @staticmethod
    def key(device_name: str, cloud_url: str) -> str:
        return f"{device_name}|{cloud_url}"

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, device_name: str, cloud_url: str) -> Correction:
        """The stored correction (a neutral one when none is stored or the file is unreadable)."""
        entry = self._read().get(self.key(device_name, cloud_url))
        try:
            return Correction(**entry) if isinstance(entry, dict) else Correction()
        except TypeError:
            return Correction()

    def put(self, device_name: str, cloud_url: str, correction: Correction) -> None:
        """Store a correction (atomically: a reader sees the old file or the new one)."""
        data = self._read()
        data[self.key(device_name, cloud_url)] = asdict(correction)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{id(data)}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.path)

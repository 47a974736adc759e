"""Where the simulator gets a device profile from: the one place to swap in the shared resolver.

Today: a ``DeviceProfile`` as is, a ``.json`` file of its fields, or a name of
``pdlink.edge.device_profile.DEVICE_PROFILES`` (``named_profile``).
"""

from __future__ import annotations

import json
from pathlib import Path

from pdlink.edge.device_profile import DeviceProfile, named_profile


def resolve_device_profile(spec: str | DeviceProfile) -> DeviceProfile:
    """The profile ``spec`` names (see the module docstring); ValueError for an unknown name."""
    if isinstance(spec, DeviceProfile):
        return spec
    if str(spec).endswith(".json"):
        return DeviceProfile.from_json(json.loads(Path(spec).read_text()))
    return named_profile(str(spec))

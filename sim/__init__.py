"""pdlink.sim: a discrete-event simulator of P/D-Device at scale (simpy): emulated devices running the real
session state machine, a simulated network, and a replaceable cloud (one batching accelerator today)."""

from pdlink.sim.batching_cloud import BatchingCloud
from pdlink.sim.cloud_model import CloudClient, CloudModel, CloudRequest, CloudStatus
from pdlink.sim.cloud_profile import CLOUD_PROFILES, CloudProfile, named_cloud_profile
from pdlink.sim.network import Network
from pdlink.sim.policy import SettingsPolicy, default_policy
from pdlink.sim.simulation import SimRequest, Simulation

__all__ = ["BatchingCloud", "CLOUD_PROFILES", "CloudClient", "CloudModel", "CloudProfile", "CloudRequest",
           "CloudStatus", "Network", "SettingsPolicy", "SimRequest", "Simulation", "default_policy",
           "named_cloud_profile"]

"""The flags every session command shares (``generate``, ``chat``) and the ``Session`` they describe."""

from __future__ import annotations

from pdlink.cli.flags import add_flags, flag_values
from pdlink.common.credentials import load_auth_token
from pdlink.common.models import default_model_id
from pdlink.common.sampling import SamplingParams
from pdlink.edge.cloud_link import CloudTarget
from pdlink.edge.device_profile import profile_names
from pdlink.edge.emulation import NetworkEmulation
from pdlink.edge.session import GenerationRequest, Session, SessionConfig

SAMPLING = ("temperature", "top_p", "top_k", "seed")
NETWORK = ("rtt_ms", "jitter_ms", "bandwidth_mbps")


def add_session_arguments(p, *, defaults: dict | None = None) -> None:
    """Package, cloud, emulation, sampling and limit flags (defaults from the configs; ``defaults`` overrides
    a request or sampling default for this command)."""
    p.add_argument("--package", help="compiled package directory (device and pd modes)")
    p.add_argument("--cloud", help="cloud service URL, ws://host:port or wss:// (cloud and pd modes)")
    p.add_argument("--auth-token-file", help="file holding the cloud's bearer token (else $PDLINK_AUTH_TOKEN)")
    p.add_argument("--cloud-ca-file", default=None, help="CA bundle for a wss:// cloud")
    p.add_argument("--model-id", default=None, help="model id announced to the cloud (default: the package's)")
    add_flags(p, GenerationRequest, ["max_tokens"], defaults=defaults)
    add_flags(p, SamplingParams, SAMPLING, defaults=defaults)
    add_flags(p, SessionConfig, ["threads", "context_window"], rename={"context_window": "context"},
              helps={"threads": "engine threads (0 = all cores)", "context_window": "context window (0 = the model's)"})
    p.add_argument("--device-profile", default=None,
                   help=f"emulate a device: {', '.join(profile_names())}, or a JSON file with the profile's fields "
                        "(labeled in the output)")
    add_flags(p, NetworkEmulation, NETWORK, prefix="net-",
              helps={"rtt_ms": "emulated network round trip added to loopback",
                     "jitter_ms": "emulated one-way jitter, uniform 0..X ms",
                     "bandwidth_mbps": "emulated bandwidth (0 = unlimited)"})
    p.add_argument("--max-gap-ms", type=float, default=SessionConfig.max_gap_s * 1000,
                   help="bound on the gap between shown cloud tokens")
    add_flags(p, SessionConfig, ["ttft_slo_s"], helps={"ttft_slo_s": "pd mode: the TTFT SLO in seconds (the cloud is "
                                                                      "not used when the device alone meets it)"})
    add_flags(p, SessionConfig, ["refine", "refine_keep_ratio"], rename={"refine_keep_ratio": "refine_keep"},
              helps={"refine": "pd mode: prefill only the prompt tokens the cloud marks as important (lossy; "
                                "auto = when it brings the hand-over clearly earlier): off, auto, on",
                     "refine_keep_ratio": "share of the prompt a refined prompt keeps"})
    p.add_argument("--show-origin", action="store_true", help="mark where tokens came from ([cloud] / [device])")


def build_session(args) -> Session:
    """The ``Session`` the flags describe."""
    cloud = None
    if args.cloud:
        model_id = args.model_id or (default_model_id(args.package) if args.package else None)
        cloud = CloudTarget(args.cloud, auth_token=load_auth_token(args.auth_token_file), ca_file=args.cloud_ca_file,
                            **({"model_id": model_id} if model_id else {}))
    cfg = SessionConfig(package=args.package, cloud=cloud, device_profile=args.device_profile,
                        network=NetworkEmulation(**flag_values(args, NETWORK)), max_gap_s=args.max_gap_ms / 1000,
                        **flag_values(args, ["threads", "context_window", "refine", "refine_keep_ratio", "ttft_slo_s"]))
    return Session(cfg)


def sampling_from(args) -> SamplingParams:
    return SamplingParams(**flag_values(args, SAMPLING))

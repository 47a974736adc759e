"""Do the cloud and the device compute the same numbers? The pd oracle depends on it.

With greedy sampling a hand-over is lossless (pd text = device text) only when the cloud's tokens are the ones
the device would have made itself. That holds when both run the same compiled package (equal ``config_hash``:
same model, quantization, KV dtype and target), or when both compute the float32 reference: float32 weights
dequantized from the same checkpoint, a float32 KV cache and float32 compute (the torch backend and an
``--quant f32`` package with f32 KV agree up to floating-point ties). Anything else -- another quantization, a
float16 KV cache on one side -- is ``different``: the hand-over is still seamless, but the answer is the
cloud's up to the hand-over and the device's after it.
"""

from __future__ import annotations

from pdlink.common.protocol_messages import Numerics

EQUAL, DIFFERENT = "equal", "different"


def package_numerics(manifest) -> Numerics:
    """The numbers a compiled package computes (from its manifest)."""
    return Numerics(checkpoint=manifest.model_name, weights=str(manifest.quantization.get("name", "")),
                    kv_dtype=str(manifest.kv_cache.get("dtype", "float32")), compute="float32", backend="package",
                    config_hash=manifest.config_hash)


def compare_numerics(device: Numerics, cloud: Numerics | None) -> tuple[str, str]:
    """``(EQUAL | DIFFERENT, why)`` for a device's and a cloud's numerics (``cloud`` None: it did not say)."""
    if cloud is None:
        return DIFFERENT, "the cloud does not declare its numerics (an older server): assumed different"
    if device.config_hash and device.config_hash == cloud.config_hash:
        return EQUAL, "the same compiled package on both sides"
    mismatches = [f"{name} {getattr(device, name)!r} vs {getattr(cloud, name)!r}"
                  for name in ("checkpoint", "weights", "kv_dtype", "compute")
                  if getattr(device, name) != getattr(cloud, name)]
    if mismatches:
        return DIFFERENT, "device vs cloud: " + ", ".join(mismatches)
    if (device.weights, device.kv_dtype, device.compute) == ("f32", "float32", "float32"):
        return EQUAL, f"float32 reference on both sides ({device.backend} vs {cloud.backend}; equal up to float ties)"
    return DIFFERENT, f"{device.weights} weights run by different backends ({device.backend} vs {cloud.backend})"

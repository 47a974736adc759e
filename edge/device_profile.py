"""Device speed profiles: how fast a device prefills and decodes, named (published figures) or measured.

A profile gives the time of a prefill chunk and of a decode step at a given context length::

    prefill(n tokens at context c) = n / prefill_tok_s * (1 + (c + n/2) / prefill_halving_tokens) + chunk_overhead_s
    decode(at context c)           = decode_s_per_token * (1 + c / decode_halving_tokens)

(the ``*_halving_tokens`` model attention's growing share: the context at which a token costs twice
as much as at the start; 0 = no slowdown; ``chunk_overhead_s`` is a fixed cost per prefill call, 0 by
default). The session uses a profile twice: to choose its settings (``pdlink.edge.session_settings``,
``pdlink.edge.settings_v2``) and, for named profiles, to slow the real engine down to that device
(``pdlink.edge.emulation``). ``pdlink profile`` measures the local engine and stores the result, so a
device measures itself once. ``resolve_profile`` turns what ``--device-profile`` was given (a name of
the table below, or the path of a JSON file with the profile's fields) into a profile.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pdlink.common.models import cache_root


@dataclass(frozen=True)
class DeviceProfile:
    """Speeds of one device running one model class (see the module docstring)."""

    name: str
    prefill_tok_s: float
    decode_s_per_token: float
    prefill_halving_tokens: float = 0.0
    decode_halving_tokens: float = 0.0
    source: str = ""
    emulated: bool = True  # a named profile the engine is slowed down to; False: this machine, measured
    chunk_overhead_s: float = 0.0  # fixed cost of one prefill call (kernel launches, graph switches)

    def __post_init__(self):
        if self.prefill_tok_s <= 0 or self.decode_s_per_token <= 0:
            raise ValueError(f"profile {self.name!r}: prefill_tok_s and decode_s_per_token must be positive")
        if self.prefill_halving_tokens < 0 or self.decode_halving_tokens < 0 or self.chunk_overhead_s < 0:
            raise ValueError(f"profile {self.name!r}: halving token counts and chunk_overhead_s must be >= 0 "
                             "(0 = no slowdown / no overhead)")

    def prefill_time_s(self, num_tokens: int, context: int = 0) -> float:
        """Seconds to prefill ``num_tokens`` tokens appended at ``context`` tokens already in the cache, as one
        call (one chunk: ``chunk_overhead_s`` is paid once)."""
        middle = context + num_tokens / 2
        slow = 1 + middle / self.prefill_halving_tokens if self.prefill_halving_tokens else 1.0
        return num_tokens / self.prefill_tok_s * slow + (self.chunk_overhead_s if num_tokens > 0 else 0.0)

    def chunked_prefill_time_s(self, num_tokens: int, chunk: int) -> float:
        """Seconds to prefill the first ``num_tokens`` tokens of a sequence in chunks of ``chunk`` tokens.
        Exact for this model: the chunks' context terms add up to ``num_tokens**2 / 2`` whatever the chunk."""
        calls = math.ceil(num_tokens / chunk) if num_tokens > 0 else 0
        return self.prefill_time_s(num_tokens, 0) + (calls - min(calls, 1)) * self.chunk_overhead_s

    def decode_time_s(self, context: int = 0) -> float:
        """Seconds for one decode step at ``context`` tokens."""
        slow = 1 + context / self.decode_halving_tokens if self.decode_halving_tokens else 1.0
        return self.decode_s_per_token * slow

    def to_json(self) -> dict:
        return asdict(self)



# Published figures for ~1-2B-parameter models on device CPUs, GPUs and NPUs. The engine here runs SmolLM2-135M
# as the stand-in model; these profiles make it take the time such a device needs for a model of that class.
# Context slowdowns come from llama.cpp runs at depth 0 and 4096 (pp1024, tg256) on the pt13762104 page cited
# below; where a source gives no depth figures, the same SoC's CPU slowdown is assumed and the source says so.
_PT = "https://pt13762104.github.io/2026/06/06/taking-a-look-at-gemma-4-e2b-qat/ ('Taking a look at Gemma 4 E2B (QAT)')"
_META = ("Meta AI, 'Introducing quantized Llama models with increased speed and a reduced memory footprint' "
         "(2024-10-24), https://ai.meta.com/blog/meta-llama-quantized-lightweight-models/")
_PHONE_SLOWDOWN = dict(prefill_halving_tokens=4160, decode_halving_tokens=21500)

DEVICE_PROFILES: dict[str, DeviceProfile] = {
    "phone-cpu": DeviceProfile(
        name="phone-cpu", prefill_tok_s=60.3, decode_s_per_token=1 / 19.2, **_PHONE_SLOWDOWN,
        source=f"OnePlus 12 (Snapdragon 8 Gen 3) CPU, Llama 3.2 1B BF16 with ExecuTorch: prefill 60.3 tok/s, "
               f"decode 19.2 tok/s -- {_META}; context slowdown: Dimensity 9000+ CPU llama.cpp pp1024 80.67 -> "
               f"42.99 tok/s and tg256 15.10 -> 12.68 tok/s at depth 4096, {_PT}",
    ),
    "phone-gpu": DeviceProfile(
        name="phone-gpu", prefill_tok_s=874.90, decode_s_per_token=1 / 19.16, **_PHONE_SLOWDOWN,
        source=f"Mali-G710 MP10 GPU (Dimensity 9000+ phone), LiteRT-LM GPU backend, Gemma 4 E2B: pp1024 874.90 "
               f"tok/s, tg256 at depth 1024 19.16 tok/s -- {_PT}; no depth-4096 GPU figures there: the same "
               "SoC's CPU context slowdown (see phone-cpu) is assumed",
    ),
    "phone-npu": DeviceProfile(
        name="phone-npu", prefill_tok_s=1000.0, decode_s_per_token=1 / 19.2, **_PHONE_SLOWDOWN,
        source="Xiaomi 14 (Snapdragon 8 Gen 3) Hexagon NPU via QNN, llm.npu (mllm), Qwen1.5-1.8B INT8: 'more than "
               "1,000 tokens/sec prefilling for a billion-sized model' -- D. Xu et al., 'Fast On-device LLM "
               "Inference with NPUs', ASPLOS 2025, https://arxiv.org/abs/2407.05858 (prefill taken as 1000 tok/s); "
               "llm.npu decodes on the CPU, so decode is the same SoC's CPU figure, 19.2 tok/s (OnePlus 12, "
               f"Llama 3.2 1B, {_META}); context slowdown assumed as phone-cpu",
    ),
    "laptop-cpu": DeviceProfile(
        name="laptop-cpu", prefill_tok_s=84.24, decode_s_per_token=1 / 20.48,
        prefill_halving_tokens=12650, decode_halving_tokens=22200,
        source=f"Intel i7-10750H laptop CPU at max frequency, llama.cpp Q4_0, Gemma 4 E2B: pp1024 84.24 tok/s, "
               f"tg256 20.48 tok/s; at depth 4096 pp1024 64.25 and tg256 17.29 -- {_PT}",
    ),
    "laptop-gpu": DeviceProfile(
        name="laptop-gpu", prefill_tok_s=2165.55, decode_s_per_token=1 / 118.57,
        prefill_halving_tokens=8640, decode_halving_tokens=76980,
        source=f"NVIDIA GTX 1660 Ti (Turing, 6 GB; listed beside the i7-10750H laptop CPU) at max frequency, "
               f"llama.cpp CUDA Q4_0, Gemma 4 E2B: pp1024 2165.55 tok/s, tg256 118.57 tok/s; at depth 4096 "
               f"pp1024 1496.00 and tg256 112.58 -- {_PT}",
    ),
}
PROFILE_ALIASES: dict[str, str] = {"phone": "phone-cpu", "laptop": "laptop-cpu"}  # names of the command line


def named_profile(name: str) -> DeviceProfile:
    """A built-in profile by name (or alias: ``phone``, ``laptop``, which keep their own name in outputs);
    ValueError listing the names otherwise."""
    target = PROFILE_ALIASES.get(name, name)
    if target not in DEVICE_PROFILES:
        raise ValueError(f"unknown device profile {name!r}; choose one of {profile_names()} or give the path "
                         "of a JSON file with the profile's fields")
    profile = DEVICE_PROFILES[target]
    return profile if target == name else replace(profile, name=name)


def profile_names() -> list[str]:
    """Every name ``named_profile`` accepts."""
    return sorted([*DEVICE_PROFILES, *PROFILE_ALIASES])


_REQUIRED = {"name": str, "prefill_tok_s": float, "decode_s_per_token": float}
_OPTIONAL = {"prefill_halving_tokens": float, "decode_halving_tokens": float, "chunk_overhead_s": float,
             "source": str, "emulated": bool}


def resolve_profile(name_or_path: str | Path | DeviceProfile) -> DeviceProfile:
    """What ``--device-profile`` names: a built-in profile (``profile_names()``), or a JSON file with the
    profile's fields (``prefill_tok_s``, ``decode_s_per_token``; optional ``name`` (default: the file's stem),
    ``prefill_halving_tokens``,
    ``decode_halving_tokens``, ``chunk_overhead_s``, ``source``, ``emulated``). Raises ValueError naming the
    file and the field for a missing, unknown, mistyped or non-positive field, or an unknown name."""
    if isinstance(name_or_path, DeviceProfile):
        return name_or_path
    text = str(name_or_path)
    if text in DEVICE_PROFILES or text in PROFILE_ALIASES:
        return named_profile(text)
    path = Path(text)
    if not (text.endswith(".json") or path.exists()):
        return named_profile(text)  # raises with the list of names
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"device profile file {path}: cannot be read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"device profile file {path}: not JSON ({exc})") from None
    return profile_from_fields(data, where=f"device profile file {path}", default_name=path.stem)


def profile_from_fields(data, where: str = "device profile", default_name: str | None = None) -> DeviceProfile:
    """A profile from a dict of its fields, every field checked (see ``resolve_profile``); ``default_name``
    names a profile whose fields give no ``name``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object with the profile's fields, got {type(data).__name__}")
    if default_name and "name" not in data:
        data = {**data, "name": default_name}
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; the fields are {sorted({**_REQUIRED, **_OPTIONAL})}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{where}: missing field {missing[0]!r} (required: {list(_REQUIRED)})")
    for key, value in data.items():
        kind = {**_REQUIRED, **_OPTIONAL}[key]
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{where}: field {key!r} must be a number, got {value!r}")
            positive = key in _REQUIRED
            if value < 0 or (positive and value == 0):
                raise ValueError(f"{where}: field {key!r} must be {'> 0' if positive else '>= 0'}, got {value!r}")
        elif not isinstance(value, kind):
            raise ValueError(f"{where}: field {key!r} must be a {kind.__name__}, got {value!r}")
    if not data["name"]:
        raise ValueError(f"{where}: field 'name' must not be empty")
    return DeviceProfile(**data)


def profile_store_path(config_hash: str, num_threads: int) -> Path:
    """Where the measured profile of a package (by config hash) at a thread count is kept."""
    return cache_root() / "profiles" / f"{config_hash[:16]}-t{num_threads}.json"


def save_profile(profile: DeviceProfile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(profile.to_json(), indent=2))
    tmp.replace(path)


def load_profile(path: Path) -> DeviceProfile | None:
    """The stored profile, or None when absent or unreadable (it is then measured again)."""
    try:
        return profile_from_fields(json.loads(Path(path).read_text()), where=f"stored profile {path}")
    except (OSError, ValueError, TypeError):
        return None


def measure_profile(engine, lengths: tuple[int, ...] = (256, 1024), decode_steps: int = 16) -> DeviceProfile:
    """Time the real engine: prefill at ``lengths`` and decode steps after the longest; fit the profile."""
    from pdlink.common.real_text import prompt_of_length

    rates = {}
    for n in lengths:
        ids = prompt_of_length(engine.tokenizer.encode, n)
        seq = engine.add_sequence()
        try:
            t0 = time.perf_counter()
            logits = engine.prefill(seq, ids)
            rates[n] = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            token = int(logits.argmax())
            for _ in range(decode_steps):
                token = int(engine.decode(seq, token).argmax())
            decode_s = (time.perf_counter() - t0) / decode_steps
        finally:
            engine.remove_sequence(seq)
    short, long = min(lengths), max(lengths)
    # rate(n) = r0 / (1 + (n/2) / H)  =>  solve for r0 and H from the shortest and longest run.
    ratio = rates[short] / rates[long]
    halving = max(0.0, (long / 2 - ratio * short / 2) / (ratio - 1)) if ratio > 1.0 else 0.0
    r0 = rates[short] * (1 + (short / 2) / halving) if halving else rates[short]
    return DeviceProfile(name="measured", prefill_tok_s=r0, decode_s_per_token=decode_s,
                         prefill_halving_tokens=halving, source=f"measured here with {engine.num_threads} threads "
                         f"on {time.strftime('%Y-%m-%d')}: prefill {rates}", emulated=False)


def stored_or_measured_profile(engine) -> DeviceProfile:
    """This machine's profile for the engine's package: read from the store, or measured once and stored."""
    path = profile_store_path(engine.manifest.config_hash, engine.num_threads)
    profile = load_profile(path)
    if profile is None:
        profile = measure_profile(engine)
        save_profile(profile, path)
    return profile

"""Device speed profiles: how fast a device prefills and decodes, named (published figures) or measured.

A profile gives the time of a prefill chunk and of a decode step at a given context length::

    prefill(n tokens at context c) = n / prefill_tok_s * (1 + (c + n/2) / prefill_halving_tokens)
    decode(at context c)           = decode_s_per_token * (1 + c / decode_halving_tokens)

(the ``*_halving_tokens`` model attention's growing share: the context at which a token costs twice
as much as at the start; 0 = no slowdown). The session uses a profile twice: to choose its settings
(``pdlink.edge.session_settings``) and, for named profiles, to slow the real engine down to that device
(``pdlink.edge.emulation``). ``pdlink profile`` measures the local engine and stores the result, so a
device measures itself once.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
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

    def __post_init__(self):
        if self.prefill_tok_s <= 0 or self.decode_s_per_token <= 0:
            raise ValueError(f"profile {self.name!r}: prefill_tok_s and decode_s_per_token must be positive")
        if self.prefill_halving_tokens < 0 or self.decode_halving_tokens < 0:
            raise ValueError(f"profile {self.name!r}: halving token counts must be >= 0 (0 = no slowdown)")

    def prefill_time_s(self, num_tokens: int, context: int = 0) -> float:
        """Seconds to prefill ``num_tokens`` tokens appended at ``context`` tokens already in the cache."""
        middle = context + num_tokens / 2
        slow = 1 + middle / self.prefill_halving_tokens if self.prefill_halving_tokens else 1.0
        return num_tokens / self.prefill_tok_s * slow

    def decode_time_s(self, context: int = 0) -> float:
        """Seconds for one decode step at ``context`` tokens."""
        slow = 1 + context / self.decode_halving_tokens if self.decode_halving_tokens else 1.0
        return self.decode_s_per_token * slow

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "DeviceProfile":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


# Published figures for ~1-2B-parameter models on device CPUs. The engine here runs SmolLM2-135M as the
# stand-in model; these profiles make it take the time such a device needs for a model of that class.
# The context slowdown of both comes from the llama.cpp runs on the page cited for `laptop`, which measured
# pp1024 and tg256 at depth 0 and 4096 on a phone CPU (Dimensity 9000+) and on this laptop CPU.
DEVICE_PROFILES: dict[str, DeviceProfile] = {
    "phone": DeviceProfile(
        name="phone", prefill_tok_s=60.3, decode_s_per_token=1 / 19.2,
        prefill_halving_tokens=4160, decode_halving_tokens=21500,
        source="OnePlus 12 (Snapdragon 8 Gen 3) CPU, Llama 3.2 1B BF16 with ExecuTorch: prefill 60.3 tok/s, "
               "decode 19.2 tok/s -- Meta AI, 'Introducing quantized Llama models with increased speed and a "
               "reduced memory footprint' (2024-10-24), https://ai.meta.com/blog/meta-llama-quantized-lightweight-models/; "
               "context slowdown: Dimensity 9000+ llama.cpp pp1024 80.67 -> 42.99 tok/s and tg256 15.10 -> 12.68 "
               "tok/s at depth 4096, https://pt13762104.github.io/",
    ),
    "laptop": DeviceProfile(
        name="laptop", prefill_tok_s=84.24, decode_s_per_token=1 / 20.48,
        prefill_halving_tokens=12650, decode_halving_tokens=22200,
        source="Intel i7-10750H laptop CPU at max frequency, llama.cpp Q4_0, Gemma 4 E2B: pp1024 84.24 tok/s, "
               "tg256 20.48 tok/s; at depth 4096 pp1024 64.25 and tg256 17.29 -- https://pt13762104.github.io/ "
               "('Taking a look at Gemma 4 E2B (QAT)')",
    ),
}


def named_profile(name: str) -> DeviceProfile:
    """A built-in profile by name; ValueError listing the names otherwise."""
    if name not in DEVICE_PROFILES:
        raise ValueError(f"unknown device profile {name!r}; choose one of {sorted(DEVICE_PROFILES)}")
    return DEVICE_PROFILES[name]


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
        return DeviceProfile.from_json(json.loads(Path(path).read_text()))
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

"""Scenario groups (P/D-Serve's fine-grained organization): which group's pools serve a request.

Pure: a request's features (the model / app id of its connection's handshake, the hash of its first
``prefix_tokens`` prompt tokens, its prompt length) go in, a group name comes out. Rules are tried in order;
the first whose every given condition holds wins; a request no rule matches goes to the default group.

A rule is written ``NAME:key=value,key=value`` on the command line (``--group``); keys:
``app`` (the handshake's ``client`` or ``model_id``), ``prefix`` (hex prefix of the prompt-prefix hash),
``min_tokens`` / ``max_tokens`` (the prompt length class, inclusive).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

DEFAULT_GROUP = "default"
PREFIX_TOKENS = 32  # the shared system prompt / prefix a group keys on


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What classification looks at."""

    app: str
    prefix_hash: str
    prompt_tokens: int


def prefix_hash(token_ids: Sequence[int], n: int = PREFIX_TOKENS) -> str:
    """Hex sha256 of the first ``n`` prompt token ids (the whole prompt when shorter)."""
    return hashlib.sha256(",".join(str(int(t)) for t in token_ids[:n]).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class GroupRule:
    """One rule; a condition left at its default always holds."""

    group: str
    app: str = ""
    prefix: str = ""
    min_tokens: int = 0
    max_tokens: int = 0  # 0 = no upper bound

    def __post_init__(self):
        if not self.group or not self.group.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"group name {self.group!r}: use letters, digits, '-' and '_'")
        if self.min_tokens < 0 or self.max_tokens < 0 or (self.max_tokens and self.max_tokens < self.min_tokens):
            raise ValueError(f"group {self.group}: need 0 <= min_tokens <= max_tokens (max_tokens 0 = no bound)")
        if self.prefix and any(c not in "0123456789abcdef" for c in self.prefix):
            raise ValueError(f"group {self.group}: prefix must be lowercase hex (of the prompt-prefix sha256)")

    def matches(self, f: RequestFeatures) -> bool:
        return ((not self.app or f.app == self.app) and f.prefix_hash.startswith(self.prefix)
                and f.prompt_tokens >= self.min_tokens and (not self.max_tokens or f.prompt_tokens <= self.max_tokens))

    @classmethod
    def parse(cls, text: str) -> "GroupRule":
        """``NAME:key=value,...`` (see the module doc); ValueError naming the bad part."""
        name, _, spec = text.partition(":")
        fields: dict[str, object] = {}
        for part in filter(None, spec.split(",")):
            key, eq, value = part.partition("=")
            if not eq or key not in ("app", "prefix", "min_tokens", "max_tokens"):
                raise ValueError(f"group rule {text!r}: {part!r} is not app=, prefix=, min_tokens= or max_tokens=")
            try:
                fields[key] = int(value) if key.endswith("tokens") else value
            except ValueError:
                raise ValueError(f"group rule {text!r}: {key} must be a whole number") from None
        return cls(name.strip(), **fields)


def classify(rules: Sequence[GroupRule], features: RequestFeatures) -> str:
    """The first matching rule's group, else ``DEFAULT_GROUP``."""
    for rule in rules:
        if rule.matches(features):
            return rule.group
    return DEFAULT_GROUP


def group_names(rules: Sequence[GroupRule]) -> list[str]:
    """Every group the rules can give, the default first, each once."""
    names = [DEFAULT_GROUP]
    for rule in rules:
        if rule.group not in names:
            names.append(rule.group)
    return names

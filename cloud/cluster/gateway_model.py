"""What the gateway knows of the model: learnt from the instances, so it loads no weights itself."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgspec

from pdlink.common.models import cache_root
from pdlink.common.protocol_messages import Numerics
from pdlink.common.tokenizer import Tokenizer


@dataclass(frozen=True)
class ModelCard:
    """The model as announced to devices (the part of a ``Backend`` a connection reads)."""

    model_id: str
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    tokenizer_hash: str
    context_window: int
    info: dict = field(default_factory=dict)
    numerics: Numerics | None = None  # what every instance computes (None when they differ or do not say)


def model_card(describe: dict[str, dict], model_id: str, need_tokenizer: bool = True
               ) -> tuple[ModelCard, Tokenizer | None]:
    """The card and a tokenizer from the instances' ``describe()`` answers; every instance must serve the
    same model and tokenizer (ValueError naming the odd one out)."""
    if not describe:
        raise ValueError("the cluster has no instances")
    first = next(iter(describe.values()))
    for name, d in describe.items():
        if d["tokenizer_hash"] != first["tokenizer_hash"] or d["vocab_size"] != first["vocab_size"]:
            raise ValueError(f"instance {name} serves another model or tokenizer than {first['name']}")
    numerics = [d.get("numerics") for d in describe.values()]
    shared = msgspec.convert(numerics[0], Numerics) if numerics[0] and all(n == numerics[0] for n in numerics) \
        else None
    card = ModelCard(model_id or first["model_id"], first["vocab_size"], tuple(first["eos_token_ids"]),
                     first["tokenizer_hash"], min(d["context_window"] for d in describe.values()), first["info"],
                     shared)
    if not need_tokenizer:
        return card, None
    if not first.get("tokenizer_json"):
        raise ValueError(f"instance {first['name']} did not send its tokenizer")
    text = first["tokenizer_json"]
    folder = cache_root() / "tokenizers" / ("gateway-" + hashlib.sha256(text.encode()).hexdigest()[:16])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    if not path.is_file():
        tmp = folder / f"tokenizer.json.tmp{id(text)}"
        tmp.write_text(text)
        tmp.replace(path)
    tokenizer = Tokenizer(path, first["tokenizer_info"])
    tokenizer.hash = first["tokenizer_hash"]  # the instances' hash of their own file, as a server announces it
    return card, tokenizer

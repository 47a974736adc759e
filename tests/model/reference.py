"""Greedy reference continuations from transformers and llama.cpp."""

from __future__ import annotations


def hf_greedy(model, prompt_ids: list[int], num_tokens: int) -> list[int]:
    """transformers' greedy continuation, ignoring end-of-sequence (exactly ``num_tokens`` ids)."""
    import torch

    out: list[int] = []
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        result = model(input_ids=ids, use_cache=True)
        for _ in range(num_tokens):
            token = int(result.logits[0, -1].argmax())
            out.append(token)
            result = model(input_ids=torch.tensor([[token]]), past_key_values=result.past_key_values, use_cache=True)
    return out


def llamacpp_greedy(gguf_path, prompt_ids: list[int], num_tokens: int, threads: int = 2) -> list[int] | None:
    """llama.cpp's greedy continuation of the same GGUF, or None when llama-cpp-python is missing."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(gguf_path), n_ctx=4096, n_threads=threads, verbose=False)
    out: list[int] = []
    for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == num_tokens:
            break
    return out

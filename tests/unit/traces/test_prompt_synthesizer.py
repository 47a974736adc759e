"""Prompts cut from real text: exact lengths, Mooncake's shared prefixes kept, seeded and deterministic."""

from __future__ import annotations

import pytest

from pdlink.traces import PromptSynthesizer, TraceRequest, synthesize_prompts


class WhitespaceTokenizer:
    """One id per whitespace-separated word: decode(encode(text)) re-encodes to the same length."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        for word in text.split():
            if word not in self.ids:
                self.ids[word] = len(self.words)
                self.words.append(word)
        return [self.ids[word] for word in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE trained on the real text: merges across cuts like a model's tokenizer would."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from pdlink.common.real_text import real_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([real_text(100_000)], trainer)

    class Adapter:
        def encode(self, text):
            return tok.encode(text).ids

        def decode(self, ids):
            return tok.decode(list(ids))

    return Adapter()


REQUESTS = [
    TraceRequest(0.0, 1200, 5, (0, 1, 2)),
    TraceRequest(0.1, 1100, 5, (0, 1, 3)),  # shares blocks 0-1 (1024 tokens) with the first
    TraceRequest(0.2, 700, 5, (0, 4)),  # shares block 0
    TraceRequest(0.3, 300, 5, (5,)),
    TraceRequest(0.4, 900, 5, ()),  # no hash ids (an Azure row)
    TraceRequest(0.5, 2000, 5, (0, 1)),  # more tokens than its hash ids cover
    TraceRequest(0.6, 0, 5, ()),
]


def test_lengths_are_exact():
    tokenizer = WhitespaceTokenizer()
    synthesizer = PromptSynthesizer(tokenizer)
    prompts = synthesizer.prompts(REQUESTS)
    assert [len(p) for p in prompts] == [r.input_tokens for r in REQUESTS]
    assert [tokenizer.encode(t) for t in synthesizer.texts(REQUESTS)] == prompts


def test_equal_leading_hash_ids_give_equal_leading_tokens():
    p = synthesize_prompts(REQUESTS, WhitespaceTokenizer())
    assert p[0][:1024] == p[1][:1024] and p[0][1024:1100] != p[1][1024:1100]
    assert p[0][:512] == p[2][:512] and p[0][512:700] != p[2][512:700]
    assert p[5][:1024] == p[0][:1024] and p[5][1024:1200] != p[0][1024:1200]
    assert p[3][:50] != p[0][:50] and p[4][:50] != p[0][:50] and p[4][:50] != p[3][:50]


def test_block_size_follows_the_argument():
    p = synthesize_prompts(REQUESTS[:2], WhitespaceTokenizer(), block_tokens=100)
    assert p[0][:200] == p[1][:200] and p[0][200:300] != p[1][200:300]


def test_seeded_and_deterministic():
    a = synthesize_prompts(REQUESTS, WhitespaceTokenizer(), seed=1)
    b = synthesize_prompts(REQUESTS, WhitespaceTokenizer(), seed=1)
    c = synthesize_prompts(REQUESTS, WhitespaceTokenizer(), seed=2)
    assert a == b and a[0][:100] != c[0][:100] and a[4][:100] != c[4][:100]


def test_requests_without_hash_ids_start_at_distinct_places():
    many = [TraceRequest(0.0, 50, 1) for _ in range(2000)]  # at 20 words two match: the docs repeat a passage
    prompts = synthesize_prompts(many, WhitespaceTokenizer())
    assert len({tuple(p) for p in prompts}) == len(many)


def test_prompts_longer_than_the_text_wrap_around():
    synthesizer = PromptSynthesizer(WhitespaceTokenizer(), text_chars=2_000)
    (prompt,) = synthesizer.prompts([TraceRequest(0.0, 5_000, 1)])
    assert len(prompt) == 5_000


def test_text_reencodes_within_two_percent_with_a_real_bpe(bpe):
    synthesizer = PromptSynthesizer(bpe, seed=3)
    for request, text in zip(REQUESTS, synthesizer.texts(REQUESTS)):
        n = len(bpe.encode(text))
        assert abs(n - request.input_tokens) <= 0.02 * request.input_tokens, (request, n)
    p = synthesizer.prompts(REQUESTS)
    assert [len(x) for x in p] == [r.input_tokens for r in REQUESTS] and p[0][:1024] == p[1][:1024]


def test_block_tokens_must_be_positive():
    with pytest.raises(ValueError, match="block_tokens"):
        PromptSynthesizer(WhitespaceTokenizer(), block_tokens=0)

"""The assistant's config (file + flags, checked with errors that say how to fix them) and its kept
conversations (prefix reuse: take over, fork, evict)."""

from __future__ import annotations

import pytest

from pdlink.assistant.config import AssistantConfig, build_config
from pdlink.assistant.prefix_cache import PrefixCache


def test_config_file_toml_or_json_with_flags_on_top(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text('package = "pkg"\ncloud = "ws://127.0.0.1:9"\nport = 8100\nmax_concurrency = 3\n')
    cfg = build_config(toml, port=8200, mode=None)
    assert (cfg.package, cfg.port, cfg.max_concurrency, cfg.default_mode) == ("pkg", 8200, 3, "pd")
    js = tmp_path / "a.json"
    js.write_text('{"package": "pkg", "kept_conversations": 0}')
    assert build_config(js).kept_conversations == 0 and build_config(js).default_mode == "device"


@pytest.mark.parametrize("text, suffix, match", [
    ('package = "p"\nprot = 1\n', ".toml", "unknown setting.*prot"),
    ("package = ", ".toml", "config file"),
    ("[1, 2]", ".json", "table of settings"),
    ("package: p", ".yaml", "toml or .json"),
])
def test_bad_config_files_are_refused_with_the_reason(tmp_path, text, suffix, match):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        build_config(path)
    with pytest.raises(FileNotFoundError):
        build_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("fields, match", [
    ({}, "package is required"),
    ({"package": "p", "mode": "pd"}, "needs a cloud"),
    ({"package": "p", "mode": "warp"}, "mode must be one of"),
    ({"package": "p", "port": 0}, "port"),
    ({"package": "p", "max_concurrency": 0}, "max_concurrency"),
    ({"package": "p", "device_profile": "toaster"}, "toaster"),
    ({"package": "p", "refine": "maybe"}, "refine"),
])
def test_bad_settings_say_what_to_change(fields, match):
    with pytest.raises(ValueError, match=match):
        AssistantConfig(**fields)


def test_prefix_cache_takes_over_a_continued_conversation_and_forks_a_shared_prefix():
    freed = []
    cache = PrefixCache(capacity=2, free=freed.append, min_shared_tokens=3)
    cache.put(1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert cache.take([9, 9, 9]) is None  # nothing shared
    fork = cache.take([1, 2, 3, 4, 50, 60])  # another conversation with the same opening
    assert fork.fork and (fork.seq, fork.ids, fork.shared) == (1, [1, 2, 3, 4], 4) and len(cache) == 1
    turn = cache.take([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])  # the same conversation's next turn
    assert not turn.fork and turn.seq == 1 and turn.shared == 10 and len(cache) == 0
    assert (cache.hits, cache.misses) == (2, 1)


def test_prefix_cache_evicts_the_least_recently_kept_beyond_capacity():
    freed = []
    cache = PrefixCache(capacity=2, free=freed.append)
    for seq in (1, 2, 3):
        cache.put(seq, [seq] * 8)
    assert freed == [1] and len(cache) == 2
    cache.clear()
    assert sorted(freed) == [1, 2, 3] and len(cache) == 0

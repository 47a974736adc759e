"""Flags derived from config dataclasses: tuple fields take several values (``--lengths 128 512``)."""

from __future__ import annotations

import argparse

from pdlink.bench.engine import EngineBenchConfig
from pdlink.cli.bench import ENGINE
from pdlink.cli.flags import add_flags, flag_values


def test_bench_engine_flags_take_lists_and_the_target():
    parser = argparse.ArgumentParser()
    add_flags(parser, EngineBenchConfig, ENGINE)
    args = parser.parse_args(["--lengths", "128", "512", "--engines", "pdlink-q4_1", "--engines", "llama.cpp",
                              "--target", "x86_64-avx2", "--threads", "2"])
    values = flag_values(args, ENGINE)
    assert values["lengths"] == (128, 512) and values["engines"] == ("pdlink-q4_1", "llama.cpp")
    assert values["target"] == "x86_64-avx2" and values["threads"] == 2

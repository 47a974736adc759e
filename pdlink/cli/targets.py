"""``pdlink targets``: the target presets."""

from __future__ import annotations


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    from pdlink.compile.target import target_presets

    for preset in target_presets().values():
        print(f"{preset.name:22s} {preset.lib_format:4s} {preset.description}")
    return 0

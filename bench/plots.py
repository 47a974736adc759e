"""Plots of benchmark JSON (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_engine_bench(report: dict, path: Path) -> None:
    """Prefill tok/s vs prompt length, prefill seconds vs length, decode tok/s, peak RSS per engine,
    and where a pdlink decode step spends its time (profile groups)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 5, figsize=(25, 4.5))
    results = {k: v for k, v in report["results"].items() if "prefill" in v}
    for name, r in results.items():
        lengths = sorted(int(n) for n in r["prefill"])
        rates = [r["prefill"][str(n)]["median_tok_s"] for n in lengths]
        axes[0].plot(lengths, rates, marker="o", label=name)
        axes[1].plot(lengths, [n / rate for n, rate in zip(lengths, rates)], marker="o", label=name)
    axes[0].set(title="prefill throughput", xlabel="prompt tokens", ylabel="tokens/s", xscale="log")
    axes[1].set(title="prefill time (linear = straight line)", xlabel="prompt tokens", ylabel="seconds")
    names = list(results)
    axes[2].bar(names, [results[n]["decode"]["median_tok_s"] for n in names], color="tab:green")
    axes[2].set(title="decode throughput", ylabel="tokens/s")
    axes[3].bar(names, [results[n]["rss_mib"]["peak"] for n in names], color="tab:purple")
    axes[3].set(title="peak RSS", ylabel="MiB")
    _plot_decode_profile(axes[4], results)
    for ax in axes[2:]:
        ax.tick_params(axis="x", rotation=20)
    axes[0].legend()
    machine = report["machine"]
    fig.suptitle(f"pdlink bench engine — {machine.get('cpu', '?')}, {machine['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_decode_profile(ax, results: dict) -> None:
    """Stacked ms per kernel group of one profiled decode step, per pdlink engine."""
    profiled = {n: r["profile"]["decode"]["groups_s"] for n, r in results.items() if "profile" in r}
    groups = sorted({g for p in profiled.values() for g in p})
    bottoms = [0.0] * len(profiled)
    for group in groups:
        ms = [1e3 * p.get(group, 0.0) for p in profiled.values()]
        ax.bar(list(profiled), ms, bottom=bottoms, label=group)
        bottoms = [b + m for b, m in zip(bottoms, ms)]
    ax.set(title="decode step by kernel group (profiled)", ylabel="ms")
    if profiled:
        ax.legend(fontsize=7)

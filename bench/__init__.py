"""pdlink.bench: benchmarks that write JSON + plots (``pdlink bench ...``)."""

"""The disaggregated cloud (P/D-Serve): gateway, scenario groups, forwarding, prefill and decode instances."""

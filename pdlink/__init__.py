"""pdlink: split LLM inference between a device and the cloud (P/D-Device, P/D-Serve)."""

__version__ = "0.1.0"

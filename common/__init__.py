"""Shared by every daemon: wire formats, crypto and TLS, config, logging, errors."""

__version__ = "0.1.0"

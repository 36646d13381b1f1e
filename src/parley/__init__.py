"""Parley: a realtime messaging server that speaks the Pusher Channels protocol."""

from parley import speedups

__version__ = "0.1.0"

speedups.use_compiled()  # before any module it may replace is imported

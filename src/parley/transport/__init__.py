"""Sockets only: HTTP/1.1 serving and the WebSocket upgrade, on one port."""

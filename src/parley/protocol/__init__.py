"""The Pusher protocol as pure code: text in, commands and text out. No asyncio, no sockets."""

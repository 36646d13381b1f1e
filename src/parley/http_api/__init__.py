"""The HTTP API: Pusher's (signed) and Parley's operational endpoints."""

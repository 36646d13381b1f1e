"""Pure authorization code: Pusher HMAC signatures. No I/O, no frameworks."""

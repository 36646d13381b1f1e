"""The running server: Node (composition, publish), Hub (local fan-out), Session (one connection)."""

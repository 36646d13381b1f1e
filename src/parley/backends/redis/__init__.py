"""The Redis technology: the broker (and presence) of a cluster."""

"""Client-side libraries: what an app embeds to talk to Parley (the Python SDK grows here)."""

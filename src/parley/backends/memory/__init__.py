"""The memory technology: stores that live in this process's memory, for tests and single-node
deployments that keep nothing across restarts. No database handle and no migrations."""

"""Pluggable engines: one small interface per role and its implementations, named <Tech><Role>
(`history.HistoryStore` -> `MemoryHistoryStore`, `SqliteHistoryStore`, `PostgresHistoryStore`)."""

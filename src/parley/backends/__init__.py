"""Pluggable engines: one small interface per role at this level (`users.UserStore`,
`grants.GrantStore`, `history.HistoryStore`, `presence.PresenceStore`) and its implementations
grouped by technology, one package each: `memory/` (this process only: tests, single node),
`sqlite/` (one file under the data directory), `postgres/` (shared by a cluster); `redis/`
comes with the scale-out work (presence lives in memory until then).

A technology package imports the role interfaces and itself, never another technology, so any
of them can be left out of a deployment. Inside one, a class is named <Tech><Role>
(`sqlite.users.SqliteUserStore`, `sqlite.history.SqliteHistoryStore`).
"""

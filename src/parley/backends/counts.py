"""The channel counts role: how many subscriptions each channel has and how many connections each
app has, counted over every live node of a deployment (`ChannelCounts`), and what a node gives
it to read its own numbers from (`LocalCounts`).

It knows nothing of the wire, the hub or sessions: the node's own numbers come through
`LocalCounts` (core.counts reads them off the hubs), and a store that keeps them elsewhere is
told which channels changed (`changed`) by a consumer of the domain events.

Theory of operation. Each node knows its own numbers exactly and at once (its hubs). A store
of one process (memory) answers with them alone: nothing is written, nothing is told, and a
subscribe costs nothing more than it did before the store existed. A store shared by a cluster
(Redis) keeps every node's numbers under that node's lease key (`Cluster.presence_key`: its id
and a generation) and answers with this node's own numbers, read at once, plus the other live
nodes' as they last wrote them: a node's changes reach the others within one flush interval
(batched, never on the message path). A node's numbers leave the answers when it stops
(`close`), or, when it dies, once the reaper that removes its presence entries removes them too
(`remove_node`): within `node_lease_s` + `presence_refresh_s`.

Channels with no subscriber anywhere are absent: `subscriptions` answers 0 and
`occupied_channels` leaves them out; "occupied" means a subscription count above 0.

Occupancy, for the `channel_occupied` / `channel_vacated` webhooks (core.webhooks), is kept
apart from the batched numbers: each change is decided at once and atomically, so that one
node, and one only, sends each webhook. `occupy` (this node's first subscriber) says whether
the channel was empty on every node; `vacate` (this node's last left) starts the hold when it
is empty everywhere now; `settle`, once the hold is over, says whether it stayed so (nobody
came back on any node meanwhile: a page reload that lands on another node makes no noise
either). A presence member's departure, which the presence store decides, is held the same
way (`hold`, then `returned` when the user is back, or `settle`). A dead node's channels go with it (`remove_node` answers those that are empty
everywhere now). A store of one process says yes to all three: the node's own transitions
are the cluster's, and core.webhooks holds them itself.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Vacancy:
    """A channel with no subscriber left on any node."""

    app_id: str
    channel: str


class LocalCounts(Protocol):
    """This node's own numbers, exact and at once (core.counts.HubCounts reads the hubs)."""

    def app_ids(self) -> Iterable[str]:
        """The apps this node serves."""

    def subscriptions(self, app_id: str, channel: str) -> int:
        """How many connections of this node subscribe to `channel` (0 when none)."""

    def occupied_channels(self, app_id: str, prefix: str) -> dict[str, int]:
        """This node's channels that have a subscriber, whose name starts with `prefix`:
        channel -> subscription count. The caller owns the dict."""

    def connections(self, app_id: str) -> int:
        """How many connections of the app this node holds."""


class ChannelCounts(abc.ABC):
    """Subscriptions per (app, channel) and connections per app, over the live nodes.

    `bind` is called once by the node as it is made; `start`, `rekey` and `remove_node` by
    the node's lease (core.cluster); `changed` by a consumer of the domain events, only when
    `tracks` is True; `occupy`, `vacate` and `settle` by core.webhooks. Queries may be called concurrently from many tasks.
    Implementations: `memory.counts.MemoryChannelCounts`, `redis.counts.RedisChannelCounts`.
    One contract suite (tests/contract/test_channel_counts.py) runs against each.
    """

    # Must the node tell it of every change of a local channel's count (`changed`)? A store
    # that only reads the node's own numbers (memory) does not: the node then does not even
    # build the events it would need (`SubscriptionCountChanged in bus.handlers`).
    tracks = False

    def __init__(self) -> None:
        self.local: LocalCounts = _NOTHING

    def bind(self, local: LocalCounts) -> None:
        """Read this node's own numbers from `local` from now on."""
        self.local = local

    def changed(self, app_id: str, channel: str) -> None:  # noqa: B027 - a no-op by default
        """The number of subscriptions to `channel` on this node changed (the new number is
        read from `local` when it is written). Never blocks: a store that writes elsewhere
        batches the writes."""

    async def start(self, node_key: str) -> list[Vacancy]:
        """Begin keeping this node's numbers under `node_key` (its lease's key); what an
        earlier process left under that key is replaced. Returns the channels that process
        left occupied and that are empty everywhere now."""
        return []

    async def rekey(self, node_key: str) -> None:  # noqa: B027
        """The node's lease ended and it took a new one: its numbers move to `node_key` (the
        old key's go at once)."""

    async def remove_node(self, node_key: str) -> list[Vacancy]:
        """Drop the numbers and the occupancy of the node `node_key` (its lease ended: the
        reaper calls this). Returns the channels it leaves empty everywhere."""
        return []

    @property
    def shared(self) -> bool:
        """Is occupancy decided across nodes (`occupy`, `vacate` and `settle` ask others)?"""
        return self.tracks

    async def occupy(self, app_id: str, channel: str) -> bool:
        """`channel` got its first subscriber on this node: was it empty on every node (and
        not vacated within a hold that is still running)?"""
        return True

    async def vacate(self, app_id: str, channel: str, hold_s: float) -> bool:
        """`channel` lost its last subscriber on this node: is it empty everywhere now? Then
        a hold of `hold_s` starts, which `settle` ends."""
        return True

    async def hold(self, app_id: str, key: str, hold_s: float) -> bool:
        """Begin a hold of `hold_s` for `key` (not a channel: a presence member,
        "channel\nuser"), whose departure the presence store already decided; True."""
        return True

    async def returned(self, app_id: str, key: str) -> bool:
        """`key` (a channel or a member) is back: was it on hold (then the hold is over,
        and neither the departure nor the return is told)?"""
        return False

    async def settle(self, app_id: str, key: str, *, now: bool = False) -> bool:
        """The hold of a `vacate` (or `hold`) that said yes is over (or, with `now`, cut
        short at shutdown): True when `key` stayed empty everywhere, nobody returned, and
        no other node's `settle` took it first."""
        return True

    async def flush(self) -> None:  # noqa: B027
        """Write what changed on this node now, not at the next interval."""

    def remote_connections(self, app_id: str) -> int:
        """The app's connections on the other live nodes, as last read (a flush interval old
        at most, while the store is reachable): what the per-app connection quota adds to
        this node's own, without waiting. 0 for a store of one process, and for an app that
        was not named as having a quota."""
        return 0

    @abc.abstractmethod
    async def subscriptions(self, app_id: str, channel: str) -> int:
        """How many subscriptions `channel` has on every live node together."""

    @abc.abstractmethod
    async def occupied_channels(self, app_id: str, prefix: str = "") -> dict[str, int]:
        """The channels with a subscriber on some live node whose name starts with `prefix`:
        channel -> subscriptions on every live node together, in no particular order."""

    @abc.abstractmethod
    async def connections(self, app_id: str) -> int:
        """How many connections the app has on every live node together."""

    async def close(self) -> None:  # noqa: B027
        """Stop writing, take this node's numbers out of the answers, release the client."""


class _Nothing:
    """The local numbers of a store not bound yet: none."""

    def app_ids(self) -> Iterable[str]:
        return ()

    def subscriptions(self, app_id: str, channel: str) -> int:
        return 0

    def occupied_channels(self, app_id: str, prefix: str) -> dict[str, int]:
        return {}

    def connections(self, app_id: str) -> int:
        return 0


_NOTHING = _Nothing()

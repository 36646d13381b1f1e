"""`MemoryConversationStore`: conversations in this process (tests, `store = "memory"`); what
it holds is lost when the process ends."""

from __future__ import annotations

import time
from collections.abc import Callable

from parley.backends.conversations import (
    Annotation,
    Conversation,
    ConversationStore,
    MessageState,
    Receipt,
)


class MemoryConversationStore(ConversationStore):
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._conversations: dict[tuple[str, str], Conversation] = {}
        self._reads: dict[tuple[str, str], dict[str, int]] = {}  # (app, user) -> id -> offset
        self._blocks: dict[tuple[str, str], list[str]] = {}  # (app, blocker) -> blocked
        self._delivered: dict[tuple[str, str], dict[str, int]] = {}  # (app, conv) -> user
        self._states: dict[tuple[str, str, int], MessageState] = {}  # (app, conv, offset)

    def _all(self) -> dict[tuple[str, str], Conversation]:
        self.check_running()
        return self._conversations

    async def create(self, conversation: Conversation) -> Conversation:
        return self._all().setdefault((conversation.app_id, conversation.id), conversation)

    async def get(self, app_id: str, conversation_id: str) -> Conversation | None:
        return self._all().get((app_id, conversation_id))

    async def replace(self, old: Conversation, new: Conversation) -> bool:
        key = (old.app_id, old.id)
        stored = self._all().get(key)
        if stored is None or stored.version != old.version:
            return False
        self._conversations[key] = new
        return True

    async def of_user(self, app_id: str, user_id: str) -> list[Conversation]:
        found = [c for c in self._all().values() if c.app_id == app_id and user_id in c.members]
        return sorted(found, key=lambda c: (c.created_at, c.id), reverse=True)

    async def of_bot(self, app_id: str, bot_id: str) -> list[Conversation]:
        found = [c for c in self._all().values() if c.app_id == app_id and bot_id in c.bots]
        return sorted(found, key=lambda c: (c.created_at, c.id), reverse=True)

    async def changed_since(self, since_ms: int) -> list[Conversation]:
        found = [c for c in self._all().values() if c.updated_at >= since_ms]
        return sorted(found, key=lambda c: c.updated_at)

    async def set_read(self, app_id: str, conversation_id: str, user_id: str, offset: int) -> int:
        self.check_running()
        reads = self._reads.setdefault((app_id, user_id), {})
        reads[conversation_id] = max(reads.get(conversation_id, 0), offset)
        return reads[conversation_id]

    async def reads(self, app_id: str, user_id: str) -> dict[str, int]:
        self.check_running()
        return dict(self._reads.get((app_id, user_id), {}))

    async def set_delivered(
        self, app_id: str, conversation_id: str, user_id: str, offset: int
    ) -> int:
        self.check_running()
        delivered = self._delivered.setdefault((app_id, conversation_id), {})
        delivered[user_id] = max(delivered.get(user_id, 0), offset)
        return delivered[user_id]

    async def receipts(self, app_id: str, conversation_id: str) -> dict[str, Receipt]:
        self.check_running()
        delivered = self._delivered.get((app_id, conversation_id), {})
        read = {
            user: reads[conversation_id]
            for (app, user), reads in self._reads.items()
            if app == app_id and conversation_id in reads
        }
        return {
            user: Receipt(delivered.get(user, 0), read.get(user, 0))
            for user in sorted({*delivered, *read})
        }

    async def annotate(
        self, app_id: str, conversation_id: str, offset: int, annotation: Annotation
    ) -> MessageState:
        self.check_running()
        key = (app_id, conversation_id, offset)
        state = self._states.get(key, MessageState(offset)).apply(annotation)
        self._states[key] = state
        return state

    async def states(
        self, app_id: str, conversation_id: str, offsets: list[int]
    ) -> dict[int, MessageState]:
        self.check_running()
        found = (self._states.get((app_id, conversation_id, o)) for o in offsets)
        return {state.offset: state for state in found if state is not None}

    async def block(self, app_id: str, blocker: str, blocked: str) -> None:
        self.check_running()
        blocks = self._blocks.setdefault((app_id, blocker), [])
        if blocked not in blocks:
            blocks.append(blocked)

    async def unblock(self, app_id: str, blocker: str, blocked: str) -> bool:
        self.check_running()
        blocks = self._blocks.get((app_id, blocker), [])
        if blocked not in blocks:
            return False
        blocks.remove(blocked)
        return True

    async def blocks(self, app_id: str, blocker: str) -> list[str]:
        self.check_running()
        return list(self._blocks.get((app_id, blocker), []))

    async def is_blocked(self, app_id: str, blocker: str, blocked: str) -> bool:
        self.check_running()
        return blocked in self._blocks.get((app_id, blocker), [])

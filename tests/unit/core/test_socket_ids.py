"""Socket ids: the Pusher shape, and fresh random ones across refills of the entropy pool."""

from __future__ import annotations

import re

from parley.core.ids import new_socket_id


def test_socket_ids_have_the_pusher_shape_and_do_not_repeat_across_pool_refills() -> None:
    ids = [new_socket_id() for _ in range(2000)]  # 20,000 bytes: five refills of 4 KiB
    assert all(re.fullmatch(r"\d{1,10}\.\d{1,10}", i) for i in ids), ids[:5]
    assert len(set(ids)) == len(ids)
    # both halves vary: neither is a counter nor a constant
    assert len({i.split(".")[0] for i in ids}) > 1900
    assert len({i.split(".")[1] for i in ids}) > 1900

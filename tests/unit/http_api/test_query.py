from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from parley.http_api.routes import parse_query


@pytest.mark.parametrize(
    "query",
    [
        "",
        "a=1&b=&c",
        "info=user_count,subscription_count&filter_by_prefix=presence-",
        "name=Some%20thing+else&x=%2B%26",
        "&&y=1=2&k%20ey=v",
        "auth_key=k&auth_timestamp=1&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e",
    ],
)
def test_parse_query_agrees_with_parse_qsl(query: str) -> None:
    assert parse_query(query) == parse_qsl(query, keep_blank_values=True)

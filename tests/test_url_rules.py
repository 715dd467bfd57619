"""`urls.url_problem` refuses exactly the URLs that the standard library's `urlsplit` or yarl
(aiohttp's parser, for https://) refuses, without loading yarl: hypothesis holds it against
yarl itself on URLs made of the characters that matter in an authority."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from mustaple.core.urls import url_problem

AUTHORITY = st.text(alphabet="ab1v.:[]@\\%-_~!$&'()*+,;=9f/?#", max_size=16)
SCHEMES = st.sampled_from(["http://", "https://", "HTTPS://"])
REFUSED_BY_YARL = [
    "http://a\\b/",
    "http://[::1]x/",
    "http://x[::1]/",
    "http://[v1]/",
    "http://[]/",
    "http://[::1]]/",
    "http://[::1]:[/",
    "https://u@[::1]]/",
]


def yarl_refuses(url: str) -> bool:
    try:
        URL(url, encoded=True)
    except ValueError:
        return True
    return False


def split_refuses(url: str) -> bool:
    try:
        urlsplit(url).port  # noqa: B018 (reading the port checks it)
    except ValueError:
        return True
    return False


@settings(max_examples=3000, deadline=None)
@given(SCHEMES, AUTHORITY)
@example("http://", "[v1f.x]:80")
@example("http://", "[::1]:80")
def test_refused_exactly_when_urlsplit_or_yarl_refuses(scheme: str, rest: str) -> None:
    url = scheme + rest
    refused = split_refuses(url) or yarl_refuses(url)
    problem = url_problem(url)
    assert (problem is not None and "not a valid URL" in problem) == refused, (url, problem)


@pytest.mark.parametrize("url", REFUSED_BY_YARL)
def test_what_yarl_refuses_is_not_valid(url: str) -> None:
    assert yarl_refuses(url)
    problem = url_problem(url)
    assert problem is not None
    assert "is not a valid URL" in problem

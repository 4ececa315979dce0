"""What the sync and the async client share: configuration, request shaping, answer reading."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import httpx

from ._operations import Call
from ._version import __version__
from .errors import UnexpectedResponse, error_from_response
from .models import _Malformed

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
USER_AGENT = f"strata-client-python/{__version__}"


def normalise_base_url(base_url: str) -> str:
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
    # Paths are appended as they are, so a base URL with a prefix (behind a proxy) works too.
    return str(url).rstrip("/")


def default_headers(extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    headers.update(extra or {})
    return headers


def request_arguments(base_url: str, default: Mapping[str, str], token: str | None, call: Call[Any]) -> dict[str, Any]:
    headers = {**default, **call.headers}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    arguments: dict[str, Any] = {
        "method": call.method,
        "url": base_url + call.path,
        "params": call.params or None,
        "headers": headers,
    }
    if call.has_body:
        arguments["json"] = call.json
    return arguments


def read_answer(call: Call[T], response: httpx.Response) -> T:
    """The call's result for a 2xx answer; the matching :class:`ProblemError` otherwise."""
    if not response.is_success:
        raise error_from_response(response)
    try:
        return call.read(response)
    except (_Malformed, ValueError) as error:
        raise UnexpectedResponse(
            f"{call.method} {call.path}: {response.status_code} answer not as documented: {error}",
            status=response.status_code,
            body=response.text[:500],
        ) from error

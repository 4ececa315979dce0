"""Write src/strata_client/_async.py from _sync.py: the same client with ``await``.

The async client is generated rather than written by hand so the two cannot drift apart;
``tests/test_client_shape.py`` fails when _async.py is not what this script makes of _sync.py.
Run it after changing _sync.py:  python scripts/generate_async.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "strata_client"

# Plain replacements, in order. Each must match, so a change in _sync.py that one of them no
# longer fits fails loudly instead of leaving a sync call in the async client.
REPLACEMENTS = [
    (
        '"""The synchronous client. Keep in step with ``_async.py``: it is generated from this file."""',
        '"""The asynchronous client, generated from ``_sync.py`` by ``scripts/generate_async.py``: do not edit."""',
    ),
    ("from collections.abc import Iterator,", "from collections.abc import AsyncIterator,"),
    ("class StrataClient:", "class AsyncStrataClient:"),
    ("A synchronous client", "An asynchronous client"),
    ("-> StrataClient", "-> AsyncStrataClient"),
    ("StrataClient.__new__(StrataClient)", "AsyncStrataClient.__new__(AsyncStrataClient)"),
    ('f"StrataClient(', 'f"AsyncStrataClient('),
    ("httpx.Client", "httpx.AsyncClient"),
    (
        "    def close(self) -> None:\n        if self._owns_http:\n            self._http.close()",
        "    async def aclose(self) -> None:\n        if self._owns_http:\n            await self._http.aclose()",
    ),
    ("    def __enter__(self)", "    async def __aenter__(self)"),
    ("    def __exit__(", "    async def __aexit__("),
    ("    ) -> None:\n        self.close()", "    ) -> None:\n        await self.aclose()"),
    (":meth:`close`", ":meth:`aclose`"),
    ("    def send(", "    async def send("),
    ("response = self._http.request(", "response = await self._http.request("),
    ("return self.send(", "return await self.send("),
    ("Iterator[", "AsyncIterator["),
    ("page = self.", "page = await self."),
    ("yield from page.items", "for item in page.items:\n                yield item"),
]

# Every other method that talks to Strata becomes a coroutine.
SYNC_METHOD = re.compile(r"\n    def (?!__init__\(|__repr__\(|with_token\()(\w+)\(")


def generate(sync_source: str) -> str:
    source = sync_source
    for old, new in REPLACEMENTS:
        if old not in source:
            raise SystemExit(f"generate_async: {old!r} not found in _sync.py")
        source = source.replace(old, new)
    return SYNC_METHOD.sub(r"\n    async def \1(", source)


def main() -> None:
    generated = generate((PACKAGE / "_sync.py").read_text())
    target = PACKAGE / "_async.py"
    if "--check" in sys.argv[1:]:
        if target.read_text() != generated:
            raise SystemExit("_async.py is stale: run python scripts/generate_async.py")
        return
    target.write_text(generated)


if __name__ == "__main__":
    main()

"""Finding the certificate that signed a leaf over AIA caIssuers: one loop for the loader
(`mustaple.adapters.loader`) and for `mustaple check` (`mustaple.adapters.checkprobe`).

No I/O of its own: the caller passes the download (`fetch_issuer` with its session, policy and
cache), so the rule (URLs in order, the first certificate that signed the leaf wins, every
failure kept as one phrase) is one piece of code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from cryptography import x509

from mustaple.core.certs import display_name, find_issuer
from mustaple.core.errors import InputError

__all__ = ["issuer_over_aia"]

Download = Callable[[str], Awaitable[list[x509.Certificate]]]


async def issuer_over_aia(
    leaf: x509.Certificate, urls: Sequence[str], download: Download
) -> tuple[x509.Certificate | None, list[str]]:
    """The first certificate downloaded from `urls` (in order) that signed `leaf`, or None
    and why each URL failed (InputError from `download` is a failure, not an exception)."""
    problems = []
    for url in urls:
        try:
            found = find_issuer(leaf, await download(url))
        except InputError as exc:
            problems.append(str(exc))
            continue
        if found is not None:
            return found, []
        problems.append(f"the certificate at {url} did not sign {display_name(leaf)}")
    return None, problems

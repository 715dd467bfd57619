"""The I/O of `mustaple check`: probe a server (or ask a certificate's responder), find the
issuer, and hand everything to the pure judge (`mustaple.core.checkjudge`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import timedelta

from cryptography import x509

from mustaple.adapters.fetch import fetch_issuer, fetch_staple
from mustaple.adapters.loader import load_target, read_patiently
from mustaple.adapters.probe import ProbeError, ProbeResult, probe_async
from mustaple.core.certs import (
    ca_issuer_urls,
    check_extensions,
    display_name,
    find_issuer,
    issuer_encoded_differently,
    parse_certificates,
)
from mustaple.core.checkjudge import CheckReport, Issuer, judge, judge_responder
from mustaple.core.clock import utc_now
from mustaple.core.errors import InputError
from mustaple.core.fetchtypes import FetchPolicy
from mustaple.core.issuers import issuer_over_aia
from mustaple.core.severity import Severity

__all__ = ["DEFAULT_PORT", "TIMEOUT", "check_responder", "check_server", "parse_address"]

TIMEOUT = 10.0  # seconds for each connection and handshake, HTTP exchange and file read

DEFAULT_PORT = 443


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """HOST, HOST:PORT, [V6]:PORT or a bare IPv6 address -> (host, port); ValueError if not."""
    host, port = text, str(default_port)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            host = ""
        port = rest[1:] or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST[:PORT] with a port from 1 to 65535")
    return host, int(port)


async def check_server(
    host: str,
    port: int,
    *,
    servername: str | None = None,
    tls_version: str | None = None,
    cafile: str | None = None,
    issuer_path: str | None = None,
    connections: int = 1,
    starttls: str | None = None,
    timeout: float = TIMEOUT,
) -> CheckReport:
    """Connect `connections` times, one after the other, find the issuer and judge; each
    connection and handshake, HTTP exchange and file read given `timeout` seconds.

    Raises ProbeError when the server cannot be probed, InputError for an unreadable file.
    """
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    results: list[ProbeResult] = []
    failed = None  # why a connection after the first could not be probed
    for number in range(1, connections + 1):
        try:
            result = await probe_async(
                host,
                port,
                servername=servername,
                tls_version=tls_version,
                cafile=cafile,
                timeout=timeout,
                starttls=starttls,
            )
        except ProbeError as exc:
            if not results:
                raise
            failed = f"connection {number} of {connections}: {exc}"
            break
        _readable(result.leaf, server)
        results.append(result)
    _one_certificate(results, server)
    issuer = await _server_issuer(results[0].chain, issuer_path, cafile, timeout)
    report = judge(results, issuer, utc_now(), server=server)
    if failed is not None and report.level < Severity.CRITICAL:
        raise ProbeError(failed)  # the worst decides: UNKNOWN beats WARNING and OK
    return report


def _one_certificate(results: Sequence[ProbeResult], server: str) -> None:
    """ProbeError when the connections served different certificates (several backends
    behind one address): each would need its own verdict; check them one by one."""
    leaves = {result.leaf: None for result in results}
    if len(leaves) > 1:
        shown = ", ".join(f"{leaf.serial_number:x}" for leaf in leaves)
        raise ProbeError(
            f"{server}: the connections served different certificates (serials {shown}): "
            "several servers behind one address? check each of them on its own"
        )


def _readable(leaf: x509.Certificate, server: str) -> None:
    """ProbeError when the served certificate's extensions are not valid (one twice, a value
    that is not DER): every strict client refuses it, and nothing about its staple can be
    judged."""
    try:
        check_extensions(leaf, server)
    except InputError as exc:
        raise ProbeError(str(exc)) from None


async def _server_issuer(
    chain: Sequence[x509.Certificate],
    issuer_path: str | None,
    cafile: str | None = None,
    timeout: float = TIMEOUT,
) -> Issuer:
    """The leaf's issuer: from the served chain, else `issuer_path`, else `cafile` (the
    issuing CA may be among its roots), else AIA caIssuers."""
    leaf = chain[0]
    found = find_issuer(leaf, chain[1:])
    if found is not None:
        return Issuer(found, "chain")
    if issuer_encoded_differently(leaf, chain[1:]) is not None:
        return Issuer(
            None,
            None,
            "the server sends the issuer, but the certificate names it encoded differently "
            "(Firefox and GnuTLS compare names as bytes and find no issuer; the CA must "
            "reissue it)",
        )
    if issuer_path is not None:
        found = await _signer_in(issuer_path, "issuer certificate", leaf, timeout)
        if found is not None:
            return Issuer(found, "file")
        return Issuer(None, None, f"{issuer_path} did not sign {display_name(leaf)}")
    found = await _signer_in(cafile, "CA file", leaf, timeout) if cafile is not None else None
    if found is not None:
        return Issuer(found, "cafile")
    return await _issuer_from_aia(leaf, timeout)


async def _signer_in(
    path: str, what: str, leaf: x509.Certificate, timeout: float
) -> x509.Certificate | None:
    data = await read_patiently(path, what, patience=timedelta(seconds=timeout))
    return find_issuer(leaf, parse_certificates(data, source=path))


async def _issuer_from_aia(leaf: x509.Certificate, timeout: float) -> Issuer:
    urls = ca_issuer_urls(leaf)
    if not urls:
        return Issuer(
            None,
            None,
            "the server does not send the issuer and the certificate names no caIssuers "
            "URL; pass it with --issuer FILE",
        )
    download = functools.partial(fetch_issuer, policy=FetchPolicy.within(timeout))
    found, problems = await issuer_over_aia(leaf, urls, download)
    if found is not None:
        return Issuer(found, "aia")
    return Issuer(None, None, "no issuer over AIA: " + "; ".join(problems))


async def check_responder(
    cert_path: str,
    issuer_path: str | None = None,
    urls: Sequence[str] = (),
    timeout: float = TIMEOUT,
) -> CheckReport:
    """Ask the certificate's responder (or `urls` first) directly, and judge its answer;
    each HTTP exchange and file read given `timeout` seconds.

    Raises InputError for an unusable certificate or issuer.
    """
    patience, policy = timedelta(seconds=timeout), FetchPolicy.within(timeout)
    target = await load_target(cert_path, issuer_path, patience=patience, policy=policy)
    fetched = await fetch_staple(target, urls=urls, policy=policy)
    source = "file" if issuer_path is not None else "bundle-or-aia"
    return judge_responder(target, fetched, utc_now(), issuer_source=source)

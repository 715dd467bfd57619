"""Finding the issuer: explicit file, the bundle, or a real download over AIA caIssuers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from conftest import Handler, LoopbackServer
from mustaple.adapters.config import WATCH_TIMEOUT
from mustaple.adapters.fetch import FetchPolicy
from mustaple.adapters.loader import IssuerDownloads, load_file, load_target
from mustaple.core.certs import Target
from mustaple.core.errors import InputError
from mustaple.testing import CA

Serve = Callable[[Handler], LoopbackServer]
DER = serialization.Encoding.DER


def load(cert: Path, issuer: Path | None = None, **kwargs: object) -> Target:
    return asyncio.run(load_target(cert, issuer, patience=WATCH_TIMEOUT, **kwargs))  # type: ignore[arg-type]


def serving(body: bytes, content_type: str = "application/pkix-cert") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type)

    return handler


def leaf_pointing_at(ca: CA, server: LoopbackServer, tmp_path: Path) -> Path:
    leaf = ca.issue("aia.test", ca_issuer_urls=[server.url + "issuer"])
    return leaf.write(tmp_path).cert  # the leaf alone: the issuer must come over AIA


def test_bundle_then_explicit_issuer(ca: CA, tmp_path: Path) -> None:
    files = ca.issue("files.test").write(tmp_path)
    assert load(files.fullchain).issuer == ca.cert
    assert load(files.cert, files.issuer).issuer == ca.cert


def test_wrong_explicit_issuer(ca: CA, tmp_path: Path) -> None:
    files = ca.issue("files.test").write(tmp_path)
    other = CA().issue("other.test").write(tmp_path / "other")
    with pytest.raises(InputError, match=r"this issuer did not sign files\.test"):
        load(files.cert, other.issuer)


def test_missing_issuer_without_aia_says_what_to_do(ca: CA, tmp_path: Path) -> None:
    files = ca.issue("lonely.test").write(tmp_path)
    with pytest.raises(InputError, match="--issuer FILE"):
        load(files.cert)


@pytest.mark.parametrize("form", ["der", "p7c"])
def test_issuer_over_aia_is_downloaded_and_cached(
    serve: Serve, ca: CA, tmp_path: Path, form: str
) -> None:
    body = ca.cert.public_bytes(DER)
    if form == "p7c":
        body = pkcs7.serialize_certificates([ca.cert, ca.root.cert], DER)
    server = serve(serving(body))
    cert = leaf_pointing_at(ca, server, tmp_path)
    downloads = IssuerDownloads()
    assert load(cert, downloads=downloads).issuer == ca.cert
    assert load(cert, downloads=downloads).issuer == ca.cert
    assert server.hits == ["GET /issuer"]


def test_concurrent_loads_of_one_url_share_one_download(
    serve: Serve, ca: CA, tmp_path: Path
) -> None:
    """Ten certificates of one CA loaded at once: one request, whose answer all ten take (the
    server answers slowly, so that every load is under way before the first answer)."""

    async def slowly(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return web.Response(body=ca.cert.public_bytes(DER), content_type="application/pkix-cert")

    server = serve(slowly)
    paths = [leaf_pointing_at(ca, server, tmp_path / str(i)) for i in range(10)]

    async def all_at_once() -> set[object]:
        downloads = IssuerDownloads()
        loaded = await asyncio.gather(*(load_file(p, downloads=downloads) for p in paths))
        return {one.target.issuer for one in loaded}

    assert asyncio.run(all_at_once()) == {ca.cert}
    assert server.hits == ["GET /issuer"]


@pytest.mark.parametrize(
    ("handler", "problem"),
    [
        (serving(b"", "text/html"), "issuer at .*: no certificate found"),
        (serving(b"x" * 70000), "larger than the size cap"),
        (serving(CA().cert.public_bytes(DER)), "did not sign aia.test"),
    ],
)
def test_bad_downloads_are_input_errors(
    serve: Serve, ca: CA, tmp_path: Path, handler: Handler, problem: str
) -> None:
    cert = leaf_pointing_at(ca, serve(handler), tmp_path)
    with pytest.raises(InputError, match=problem):
        load(cert)


def test_unreachable_aia(ca: CA, tmp_path: Path) -> None:
    leaf = ca.issue("aia.test", ca_issuer_urls=["http://127.0.0.1:9/issuer"])
    cert = leaf.write(tmp_path).cert
    refused = (
        r"could not download the issuer from http://127\.0\.0\.1:9/issuer "
        r"\(could not connect to the caIssuers server: 127\.0\.0\.1:9: Connection refused\)"
    )
    with pytest.raises(InputError, match=refused):
        load(cert, policy=FetchPolicy(attempts_per_url=1))
    # `prime` and `run` have no --issuer: the key of the entry is said too
    with pytest.raises(InputError, match=r"or the `issuer` key of its \[\[certificates\]\] entry"):
        load(cert, policy=FetchPolicy(attempts_per_url=1))

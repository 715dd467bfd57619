"""The command line, run in-process through `main(argv)`, and once as the installed script."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from conftest import Handler, LoopbackServer, build_response, ocsp_reply
from mustaple.cli import main
from mustaple.core.report import FETCH_KEYS, OUTCOME_KEYS, STAPLE_KEYS, ExitCode
from mustaple.testing import CA, Leaf, LeafFiles

Serve = Callable[[Handler], LoopbackServer]
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
JSON_KEYS = {
    "ok", "status", "reason", "message", "serial", "must_staple", "this_update", "next_update",
    "effective_expiry", "responder_url", "attempts",
}  # fmt: skip


def answering(body: bytes) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return ocsp_reply(body)

    return handler


async def html_page(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html>maintenance</html>", content_type="text/html")


@pytest.fixture
def site(ca: CA, tmp_path: Path, now: datetime) -> tuple[Leaf, LeafFiles]:
    leaf = ca.issue("cli.test", ocsp_urls=[])
    return leaf, leaf.write(tmp_path / "cert")


def response(ca: CA, leaf: Leaf, now: datetime, **kwargs: object) -> bytes:
    return build_response(
        leaf,
        ca.issuing,
        this_update=now,
        next_update=now + 2 * DAY,
        **kwargs,  # type: ignore[arg-type]
    )


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_fetch_good_writes_the_staple(
    serve: Serve,
    ca: CA,
    site: tuple[Leaf, LeafFiles],
    now: datetime,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leaf, files = site
    body = response(ca, leaf, now)
    server = serve(answering(body))
    out_file = tmp_path / "staple.der"
    code, out, err = run(
        ["fetch", str(files.fullchain), "--url", server.url, "--out", str(out_file)], capsys
    )
    assert code == ExitCode.GOOD
    assert out.startswith("OK cli.test: good staple, valid until ")
    assert f"saved to {out_file}" in out
    assert out.count("\n") == 1
    assert err == ""
    assert out_file.read_bytes() == body


def test_a_chain_with_the_ca_first_is_said_to_be_in_the_wrong_order(
    site: tuple[Leaf, LeafFiles], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CA's certificate first, the server's after it: it said "the issuer of <the CA> is
    not in this file ... use fullchain.pem", of a file that is one, in the wrong order."""
    _, files = site
    upside_down = tmp_path / "upside-down.pem"
    upside_down.write_bytes(files.chain.read_bytes() + files.cert.read_bytes())
    code, out, err = run(["fetch", str(upside_down)], capsys)
    assert (code, out) == (ExitCode.USAGE, "")
    assert err == (
        f"mustaple: {upside_down}: the first certificate is a CA's (mustaple test root) and "
        "the server's own (cli.test) comes after it: a server sends the first as its own, "
        "and mustaple staples for it; put the server's certificate first, then its chain "
        "(certbot's fullchain.pem is in that order)\n"
    )


def test_fetch_json(
    serve: Serve,
    ca: CA,
    site: tuple[Leaf, LeafFiles],
    now: datetime,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leaf, files = site
    server = serve(answering(response(ca, leaf, now)))
    code, out, _ = run(["fetch", str(files.fullchain), "--url", server.url, "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert JSON_KEYS | set(STAPLE_KEYS) <= set(data)
    assert list(data) == list(FETCH_KEYS)
    assert data["error"] is None
    assert data["ok"] is True
    assert data["status"] == "good"
    assert data["must_staple"] is True
    assert data["serial"] == f"{leaf.cert.serial_number:x}"
    assert data["responder_url"] == server.url
    assert data["attempts"][0]["http_status"] == 200


def test_fetch_revoked_exits_3_and_writes_nothing(
    serve: Serve,
    ca: CA,
    site: tuple[Leaf, LeafFiles],
    now: datetime,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leaf, files = site
    server = serve(answering(response(ca, leaf, now, status=ocsp.OCSPCertStatus.REVOKED)))
    out_file = tmp_path / "staple.der"
    argv = ["fetch", str(files.fullchain), "--url", server.url, "--out", str(out_file)]
    code, out, _ = run(argv, capsys)
    assert code == ExitCode.REVOKED
    assert out.startswith("REVOKED cli.test: REVOKED at ")
    assert "replace the certificate" in out
    assert not out_file.exists()


def test_fetch_out_never_sets_a_staple_file_back(
    serve: Serve,
    ca: CA,
    site: tuple[Leaf, LeafFiles],
    now: datetime,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The file holds a newer revoked answer (a keeper's sink file): a good answer of two
    hours before does not replace it (it did, and the keeper never wrote it again); an older
    answer there, or another certificate's, is replaced as before."""
    leaf, files = site
    out_file = tmp_path / "staple.der"
    revoked = response(ca, leaf, now, status=ocsp.OCSPCertStatus.REVOKED)
    out_file.write_bytes(revoked)
    older = build_response(leaf, ca.issuing, this_update=now - 2 * HOUR, next_update=now + DAY)
    server = serve(answering(older))
    argv = ["fetch", str(files.fullchain), "--url", server.url, "--out", str(out_file)]
    code, out, err = run(argv, capsys)
    assert code == ExitCode.USAGE
    assert out == ""
    assert err.startswith(f"mustaple: {out_file}: holds a newer answer for this certificate (")
    assert err.count("\n") == 1
    assert out_file.read_bytes() == revoked
    other = ca.issue("other.test", ocsp_urls=[])
    for held in (older, response(ca, other, now)):
        out_file.write_bytes(held)
        body = response(ca, leaf, now)
        server = serve(answering(body))
        argv = ["fetch", str(files.fullchain), "--url", server.url, "--out", str(out_file)]
        assert run(argv, capsys)[0] == ExitCode.GOOD
        assert out_file.read_bytes() == body


def test_fetch_unknown_and_rejected_exit_1(
    serve: Serve,
    ca: CA,
    site: tuple[Leaf, LeafFiles],
    now: datetime,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leaf, files = site
    server = serve(answering(response(ca, leaf, now, status=ocsp.OCSPCertStatus.UNKNOWN)))
    code, out, _ = run(["fetch", str(files.fullchain), "--url", server.url, "--json"], capsys)
    assert code == ExitCode.NO_STAPLE
    data = json.loads(out)
    assert (data["ok"], data["status"], data["reason"]) == (False, "unknown", "cert-status-unknown")
    server.handler = html_page
    code, out, _ = run(["fetch", str(files.fullchain), "--url", server.url], capsys)
    assert code == ExitCode.NO_STAPLE
    assert out.startswith("FAILED cli.test: no valid staple: the answer is not application/ocsp")
    assert out.count("\n") == 1


def test_fetch_without_ocsp_url_on_must_staple(
    site: tuple[Leaf, LeafFiles], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["fetch", str(site[1].fullchain)], capsys)
    assert code == ExitCode.NO_STAPLE
    assert "must-staple certificate without an OCSP URL: it can never be served" in out


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["fetch", "/nonexistent/cert.pem"], "certificate not found"),
        (["fetch", "{garbage}"], "no certificate found"),
        (["fetch", "{cert}", "--url", "ftp://x"], "not an http:// or https:// URL"),
        (["fetch", "{cert}", "--hash", "md5"], "Invalid value for '--hash'"),
        (["fetch"], "Missing argument 'CERT'"),
        (["inspect", "{garbage}", "--cert", "{cert}", "--at", "yesterday"], "ISO 8601"),
        (["fetch", "{cert}", "--out", "/nonexistent/dir/x.der", "--url", "{url}"], "cannot write"),
        (["fetch", "{cert}", "--out", "{cert}", "--url", "{url}"], "--out is the input file"),
        (["fetch", "{cert}", "--out", "{garbage}", "--url", "{url}"], "holds something else"),
        (["fetch", "{cert}", "--out", "{der}", "--url", "{url}"], "holds something else"),
        (["fetch", "{cert}", "--out", "/tmp", "--url", "{url}"], "/tmp: is a directory"),
        (["fetch", "{cert}", "--proxy", "http://[::1", "--url", "{url}"], "not a URL"),
        (["fetch", "{cert}", "--proxy", "http://a..b:3128"], "host is not a name or address"),
        (["fetch", "{cert}", "--attempts", "1000"], "1000 is not in the range 1<=x<=10"),
        (["inspect", "{garbage}", "--cert", "{cert}", "--at", "9999-12-31T23:59Z"], "year 2 to"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    serve: Serve,
    ca: CA,
    site: tuple[Leaf, LeafFiles],
    now: datetime,
    tmp_path: Path,
    argv: list[str],
    problem: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leaf, files = site
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\x00\x01 not a certificate")
    der = tmp_path / "leaf.der"  # begins with a SEQUENCE, as a response does
    der.write_bytes(leaf.cert.public_bytes(serialization.Encoding.DER))
    server = serve(answering(response(ca, leaf, now)))
    values = {"garbage": str(garbage), "cert": str(files.fullchain), "url": server.url}
    values["der"] = str(der)
    before = {path: path.read_bytes() for path in (garbage, files.fullchain, der)}
    code, out, err = run([a.format(**values) for a in argv], capsys)
    assert code == ExitCode.USAGE
    assert problem in err
    assert "Traceback" not in err + out
    assert {path: path.read_bytes() for path in before} == before  # nothing overwritten


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["fetch", "{missing}"], "{missing}: certificate not found"),
        (["fetch", "{garbage}"], "{garbage}: no certificate found"),
        (["fetch", "{cert}", "--url", "ftp://x"], "'ftp://x' is not an http:// or https:// URL"),
        (["fetch", "{cert}", "--out", "{cert}", "--url", "{url}"], "--out is the input file"),
        (["fetch", "{cert}", "--proxy", "http://[::1", "--url", "{url}"], "not a URL"),
        (["inspect", "{response}", "--cert", "{garbage}"], "{garbage}: no certificate found"),
        (["inspect", "{base64}", "--cert", "{cert}"], "{base64}: neither DER nor base64"),
        (["inspect", "{missing}", "--cert", "{cert}"], "{missing}: OCSP response not found"),
        (["inspect", "{response}", "--cert", "{cert}", "--at", "yesterday"], "ISO 8601"),
    ],
)
def test_json_gets_one_object_for_bad_input_too(
    serve: Serve,
    ca: CA,
    site: tuple[Leaf, LeafFiles],
    now: datetime,
    tmp_path: Path,
    argv: list[str],
    problem: str,
) -> None:
    """With --json, bad input printed nothing on standard output: a script reading the
    object failed on empty input. It gets one object now, with the same keys as ever (null)
    and `error`, and exit 2; standard error has the one line as before."""
    leaf, files = site
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate")
    answer = tmp_path / "response.der"
    answer.write_bytes(response(ca, leaf, now))
    encoded = tmp_path / "hello.b64"  # base64, but of no DER
    encoded.write_bytes(base64.b64encode(b"hello"))
    server = serve(answering(response(ca, leaf, now)))
    values = {"garbage": garbage, "cert": files.fullchain, "url": server.url}
    values |= {"missing": tmp_path / "missing.pem", "response": answer, "base64": encoded}
    argv = [MUSTAPLE, *(a.format(**values) for a in argv), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == ExitCode.USAGE
    assert done.stderr.startswith("mustaple: ")
    assert done.stderr.count("\n") == 1
    said = json.loads(done.stdout)
    keys = FETCH_KEYS if argv[1] == "fetch" else OUTCOME_KEYS
    assert list(said) == list(keys)
    assert problem.format(**values) in said["error"]
    assert said["error"] == said["message"]
    assert said["error"] in done.stderr
    assert said["ok"] is False
    assert {key for key, value in said.items() if value is not None} == {"ok", "message", "error"}


def test_inspect_explains(
    ca: CA,
    site: tuple[Leaf, LeafFiles],
    now: datetime,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leaf, files = site
    der_file = tmp_path / "r.der"
    der_file.write_bytes(response(ca, leaf, now))
    code, out, _ = run(["inspect", str(der_file), "--cert", str(files.fullchain)], capsys)
    assert code == 0
    assert "verdict:          VALID, can be stapled" in out
    assert "must-staple:      yes" in out
    later = (now + 3 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ")
    argv = ["inspect", str(der_file), "--cert", str(files.fullchain), "--at", later, "--json"]
    code, out, _ = run(argv, capsys)
    assert code == ExitCode.NO_STAPLE
    assert json.loads(out)["reason"] == "expired"
    assert list(json.loads(out)) == list(OUTCOME_KEYS)


def test_inspect_base64_and_garbage(
    ca: CA,
    site: tuple[Leaf, LeafFiles],
    now: datetime,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    leaf, files = site
    b64 = tmp_path / "r.b64"
    b64.write_bytes(base64.encodebytes(response(ca, leaf, now)))
    code, _, _ = run(["inspect", str(b64), "--cert", str(files.fullchain)], capsys)
    assert code == 0
    b64.write_bytes(b"\xef\xbb\xbf" + b64.read_bytes())  # saved by an editor: a UTF-8 BOM
    code, _, _ = run(["inspect", str(b64), "--cert", str(files.fullchain)], capsys)
    assert code == 0  # it said "REJECTED [malformed] ... bad length field"
    junk = tmp_path / "junk.der"
    junk.write_bytes(b"\x30\x82\xff\xff garbage")
    code, out, _ = run(["inspect", str(junk), "--cert", str(files.fullchain)], capsys)
    assert code == ExitCode.NO_STAPLE
    assert "REJECTED [malformed]" in out


def test_installed_script_never_shows_a_traceback(tmp_path: Path) -> None:
    garbage = tmp_path / "bad.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    script = Path(sys.executable).with_name("mustaple")
    done = subprocess.run(
        [str(script), "fetch", str(garbage)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"mustaple: {garbage}: not a readable certificate")
    assert done.stderr.count("\n") == 1


def test_a_key_usage_cryptography_refuses_is_fetched_and_stapled(
    serve: Serve, ca: CA, now: datetime, tmp_path: Path
) -> None:
    """A leaf whose keyUsage is digitalSignature and decipherOnly, its staple signed by a
    delegate whose keyUsage is decipherOnly alone: no keyAgreement, so cryptography refuses
    both keyUsages (and every extension with them); every strict client takes both
    (docs/strictness.md). The installed script loads the leaf, validates and saves the staple."""
    usage = x509.oid.ExtensionOID.KEY_USAGE
    leaf = ca.issue("odd.test", ocsp_urls=[], extensions=[(_key_usage(usage, "0303078080"), True)])
    delegate = ca.delegated_signer(extensions=[(_key_usage(usage, "0303070080"), True)])
    body = build_response(
        leaf, delegate, this_update=now, next_update=now + 2 * DAY, include_signer=True
    )
    server = serve(answering(body))
    files = leaf.write(tmp_path / "cert")
    out_file = tmp_path / "staple.der"
    argv = ["fetch", str(files.fullchain), "--url", server.url, "--out", str(out_file)]
    done = subprocess.run(
        [MUSTAPLE, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stderr) == (ExitCode.GOOD, ""), done.stdout
    assert done.stdout.startswith("OK odd.test: good staple, valid until ")
    assert out_file.read_bytes() == body
    assert server.hits  # the staple came from the responder


def _key_usage(oid: x509.ObjectIdentifier, value: str) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(oid, bytes.fromhex(value))


def test_fetch_out_over_a_staple_of_a_missing_certificate_says_it_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staple = tmp_path / "old.der"
    staple.write_bytes(b"\x30\x03\x0a\x01\x03")  # a staple from before
    code, _, err = run(["fetch", str(tmp_path / "moved.pem"), "--out", str(staple)], capsys)
    assert (code, err) == (
        ExitCode.USAGE,
        f"mustaple: {tmp_path}/moved.pem: certificate not found\n",
    )


def test_output_that_cannot_be_written_and_pkcs7_input_are_one_line(
    site: tuple[Leaf, LeafFiles], tmp_path: Path
) -> None:
    """Standard output on a full disk: one line, exit 2 (it was an internal error); a
    PKCS#7 bundle as openssl crl2pkcs7 makes it: no warning from the library on stderr."""
    _, files = site
    script = str(Path(sys.executable).with_name("mustaple"))
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [script, "fetch", str(files.fullchain), "--attempts", "1", "--timeout", "1"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert (done.returncode, done.stderr) == (
        2,
        "mustaple: cannot write the output (No space left on device)\n",
    )
    bundle = tmp_path / "bundle.p7b"
    subprocess.run(
        ["openssl", "crl2pkcs7", "-nocrl", "-certfile", str(files.fullchain), "-out", str(bundle)],
        check=True,
    )
    done = subprocess.run(
        [script, "fetch", str(bundle), "--attempts", "1", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stderr == ""
    assert done.stdout.startswith("FAILED cli.test: ")


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert "mustaple" in out
    code, out, _ = run(["fetch", "--help"], capsys)
    assert code == 0
    assert "Exit codes" in out

"""The real clients as judges of a staple: GnuTLS, curl, `openssl ocsp` and headless Firefox.

Each judge serves a matrix case through a real TLS handshake (`StaplingServer`, one port per
case) and reports a `Verdict`: accepted, or refused with the client's own words. The CLI
clients run as subprocesses (`gnutls-cli --ocsp`, `curl --cert-status`; `openssl ocsp
-respin` reads the bytes alone). Firefox runs once, headless, with a fresh profile whose NSS
database trusts the matrix roots, and is driven over WebDriver BiDi (`--remote-debugging-port`,
aiohttp's websocket client): each case is one `browsingContext.navigate`, whose error names the
exact NSS/mozpkix error code.

The network stays on loopback: the leaves' OCSP URL is a closed loopback port and the Firefox
profile turns off updates, telemetry, safe browsing and every other background connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mustaple.testing.matrix import HOSTNAME, Case
from mustaple.testing.tls import StaplingServer

__all__ = ["CLI_JUDGES", "Firefox", "Verdict", "Workspace", "judge_with_cli"]

_TIMEOUT = 30.0  # seconds for one client run or one navigation
_CLI_PARALLEL = 4  # cases a CLI client judges at once (each waits mostly on its server)
_FIREFOX_PREFS: dict[str, bool | int | str] = {
    # the judge: OCSP on, a failed live fetch tolerated (the AIA is a closed port)
    "security.OCSP.enabled": 1,
    "security.OCSP.require": False,
    # nothing but the pages we open: no updates, telemetry, remote settings or probes
    "app.update.disabledForTesting": True,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "extensions.blocklist.enabled": False,
    "extensions.update.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disableIPv6": True,
    "network.proxy.type": 0,
    "security.certerrors.mitm.priming.enabled": False,
    "security.pki.crlite_mode": 0,
    "security.remote_settings.crlite_filters.enabled": False,
    "security.remote_settings.intermediates.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.unified": False,
}
_GNUTLS_WORDS = {
    "The certificate requires the server to include an OCSP status in its response, but the "
    "OCSP status is missing.": "OCSP status missing",
    "The received OCSP status response is invalid.": "OCSP response invalid",
    "The revocation or OCSP data are old and have been superseded.": "OCSP data too old",
    "The revocation or OCSP data are issued with a future date.": "OCSP data from the future",
    "The certificate chain is revoked.": "revoked",
}


@dataclass(frozen=True)
class Verdict:
    """What a client did with a staple: accepted, or refused with its own short words."""

    accepted: bool
    words: str = ""

    @property
    def cell(self) -> str:
        """The verdict as a table cell of docs/strictness.md."""
        return "accepts" if self.accepted else f"refuses: {self.words}"

    @classmethod
    def from_cell(cls, cell: str) -> Verdict:
        if cell == "accepts":
            return cls(True)
        return cls(False, cell.removeprefix("refuses: "))


class Workspace:
    """A directory with the trusted roots and, per case, the files the CLI clients read."""

    def __init__(self, directory: Path, roots: Iterable[x509.Certificate]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.roots = directory / "roots.pem"
        pem = serialization.Encoding.PEM
        self.roots.write_bytes(b"".join(root.public_bytes(pem) for root in roots))

    def case_dir(self, case: Case) -> Path:
        directory = self.directory / case.name.replace("/", "_")
        if not directory.exists():
            case.leaf.write(directory)
            (directory / "staple.der").write_bytes(case.staple)
        return directory


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )


def gnutls(workspace: Workspace, port: int, *, tls12: bool = False) -> Verdict:
    """`gnutls-cli --ocsp`: the handshake verifies the chain and the stapled response (with
    `tls12`, TLS 1.2 at most: the staple comes in a CertificateStatus message)."""
    done = _run(
        [
            "gnutls-cli", "--ocsp", "--x509cafile", str(workspace.roots),
            *(["--priority", "NORMAL:-VERS-TLS1.3"] if tls12 else []),
            "--port", str(port), HOSTNAME,
        ]
    )  # fmt: skip
    if done.returncode == 0:
        return Verdict(True)
    status = re.search(r"Status: The certificate is NOT trusted\. (.*?)\s*$", done.stdout, re.M)
    if status is None:
        lines = (done.stdout + done.stderr).strip().splitlines()
        return Verdict(False, lines[-1] if lines else f"exit status {done.returncode}")
    return Verdict(False, _GNUTLS_WORDS.get(status.group(1), status.group(1)))


def curl(workspace: Workspace, port: int, *, tls12: bool = False) -> Verdict:
    """`curl --cert-status` (OpenSSL): the handshake, then curl's own OCSP checks (with
    `tls12`, TLS 1.2 at most)."""
    done = _run(
        [
            "curl", "--silent", "--show-error", "--cert-status",
            *(["--tls-max", "1.2"] if tls12 else []),
            "--cacert", str(workspace.roots),
            "--resolve", f"{HOSTNAME}:{port}:127.0.0.1",
            "--output", "/dev/null",
            f"https://{HOSTNAME}:{port}/",
        ]
    )  # fmt: skip
    if done.returncode == 0:
        return Verdict(True)
    message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    return Verdict(False, re.sub(r"^curl: \(\d+\) ", "", message) or f"exit {done.returncode}")


def openssl_ocsp(workspace: Workspace, case: Case) -> Verdict:
    """`openssl ocsp -respin`: verify the bytes against the roots; the status must be good."""
    directory = workspace.case_dir(case)
    cert = directory / "cert.pem"
    done = _run(
        [
            "openssl", "ocsp", "-no_nonce", "-respin", str(directory / "staple.der"),
            "-CAfile", str(workspace.roots),
            "-issuer", str(directory / "issuer.pem"), "-cert", str(cert),
        ]
    )  # fmt: skip
    first = done.stdout.splitlines()[0] if done.stdout else ""
    if done.returncode == 0 and first == f"{cert}: good" and "Response verify OK" in done.stderr:
        return Verdict(True)
    return Verdict(False, _openssl_words(done, f"{cert}: "))


def _openssl_words(done: subprocess.CompletedProcess[str], prefix: str) -> str:
    responder = re.search(r"^Responder Error: (.+)$", done.stdout, re.M)
    if responder:
        return f"responder error {responder.group(1)}"
    errors: list[str] = re.findall(
        r"^[0-9A-F]+:error:[0-9A-F]+:[^:]*:[^:]*:([^:]+):", done.stdout + done.stderr, re.M
    )
    if errors:
        return errors[-1]
    for line in done.stdout.splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip().rstrip(".")
    if "Response Verify Failure" in done.stderr:
        return "Response Verify Failure"
    lines = done.stderr.strip().splitlines()
    return lines[0] if lines else f"exit status {done.returncode}"


CLI_JUDGES: dict[str, Callable[[Workspace, int], Verdict]] = {"gnutls": gnutls, "curl": curl}


def judge_with_cli(workspace: Workspace, cases: Iterable[Case], client: str) -> dict[str, Verdict]:
    """Every case judged by one CLI client, a few at a time: each served on its own port
    (openssl reads the bytes alone)."""

    def judge(case: Case) -> Verdict:
        if client == "openssl":
            return openssl_ocsp(workspace, case)
        with StaplingServer(case.leaf, staple=case.staple) as server:
            return CLI_JUDGES[client](workspace, server.port)

    cases = list(cases)
    if client == "openssl":
        for case in cases:
            workspace.case_dir(case)  # written once, before the threads read them
    with ThreadPoolExecutor(max_workers=_CLI_PARALLEL) as pool:
        return dict(zip((case.name for case in cases), pool.map(judge, cases), strict=True))


class FirefoxError(RuntimeError):
    """Firefox could not be started or driven (not a verdict about a staple)."""


class Firefox:
    """Headless Firefox ESR with a fresh profile trusting `roots`, driven over WebDriver BiDi.

    async with Firefox(roots) as firefox:
        verdict = await firefox.judge(port)
    """

    def __init__(self, roots: Iterable[x509.Certificate], *, tls12: bool = False) -> None:
        """With `tls12`, TLS 1.2 at most (`security.tls.version.max` 3)."""
        self._roots = tuple(roots)
        self._prefs = {**_FIREFOX_PREFS, **({"security.tls.version.max": 3} if tls12 else {})}
        self._profile: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._context = ""
        self._ids = 0

    async def __aenter__(self) -> Firefox:
        try:
            self._profile = Path(tempfile.mkdtemp(prefix="mustaple-firefox-"))
            _make_profile(self._profile, self._roots, self._prefs)
            url = await self._launch(self._profile)
            self._http = aiohttp.ClientSession()
            self._socket = await self._http.ws_connect(url + "/session", max_msg_size=0)
            await self._call("session.new", {"capabilities": {}})
            tree = await self._call("browsingContext.getTree", {})
            self._context = tree["result"]["contexts"][0]["context"]
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _launch(self, profile: Path) -> str:
        self._process = await asyncio.create_subprocess_exec(
            "firefox-esr", "--headless", "--no-remote", "--profile", str(profile),
            "--remote-debugging-port", "0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._process.stderr is not None
        async with asyncio.timeout(_TIMEOUT):
            async for raw in self._process.stderr:
                found = re.search(r"WebDriver BiDi listening on (ws://\S+)", raw.decode())
                if found:
                    asyncio.get_running_loop().create_task(_drain(self._process.stderr))
                    return found.group(1)
        raise FirefoxError("Firefox exited before its remote agent listened")

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._socket is not None
        self._ids += 1
        await self._socket.send_json({"id": self._ids, "method": method, "params": params})
        async with asyncio.timeout(_TIMEOUT):
            while True:
                message: dict[str, Any] = await self._socket.receive_json()
                if message.get("id") == self._ids:
                    return message

    async def judge(self, port: int) -> Verdict:
        """Navigate to https://localhost:`port`/: accepted if the page loads."""
        url = f"https://{HOSTNAME}:{port}/"
        params = {"context": self._context, "url": url, "wait": "complete"}
        answer = await self._call("browsingContext.navigate", params)
        if answer.get("type") == "success":
            return Verdict(True)
        message = str(answer.get("message", answer))
        code = re.search(r"NS_ERROR_MODULE_SECURITY, (\w+)\)", message)
        return Verdict(False, code.group(1) if code else message.removeprefix("Error: "))

    async def judge_cases(self, cases: Iterable[Case]) -> dict[str, Verdict]:
        verdicts = {}
        for case in cases:
            with StaplingServer(case.leaf, staple=case.staple) as server:
                verdicts[case.name] = await self.judge(server.port)
        return verdicts

    async def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._call("session.end", {})
            await self._socket.close()
        if self._http is not None:
            await self._http.close()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                async with asyncio.timeout(_TIMEOUT):
                    await self._process.wait()
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
        self._socket = self._http = self._process = self._profile = None


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


def _make_profile(
    profile: Path, roots: Iterable[x509.Certificate], prefs: dict[str, bool | int | str]
) -> None:
    """An empty NSS database trusting `roots` for TLS, and `prefs` in user.js."""
    database = f"sql:{profile}"
    _certutil(["-N", "-d", database, "--empty-password"])
    for number, root in enumerate(roots):
        pem = profile / f"root{number}.pem"
        pem.write_bytes(root.public_bytes(serialization.Encoding.PEM))
        _certutil(
            ["-A", "-d", database, "-n", f"mustaple root {number}", "-t", "C,,", "-i", str(pem)]
        )
    lines = (f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())
    (profile / "user.js").write_text("".join(lines))


def _certutil(arguments: list[str]) -> None:
    done = _run(["certutil", *arguments])
    if done.returncode != 0:
        raise FirefoxError(f"certutil {arguments[0]} failed: {done.stderr.strip()}")

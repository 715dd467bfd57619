"""More real programs on loopback for tests: an outbound HTTP proxy and a mail server.

Same shape as `servers.py`: each runs the real Debian program as a child process in the
foreground, with its own configuration, logs and spool in the test's directory, on a free port
of 127.0.0.1.

`TinyproxyServer` logs every request it forwards (`requests()` reads them back); `deny` makes it
refuse every client (403 Access denied), `filtered` refuses every URL (403 Filtered), and
`upstream` sends everything on to another proxy (a dead one gives 502), `auth` (user, password)
wants those credentials (407 without them).

`EximServer` is Exim 4 (Debian's exim4-daemon-heavy, built with GnuTLS) in the foreground as
root, offering STARTTLS with `tls_ocsp_file`; it refuses every recipient, so no mail is ever
accepted or sent. `gnutls_staple` is what GnuTLS's client gets from it over STARTTLS.

The staplers that fetch their own staples, each told to ask `responder` instead of the CA:
`CaddyServer` (Caddy 2, `ocsp_overrides`), `NatsServer` (nats-server, `ocsp { url }`) and
`JsseServer` (tests/jsse/StaplingServer.java on Java's own TLS stack, `jdk.tls.stapling.*`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from mustaple.testing import Leaf
from servers import Server, ServerError

__all__ = [
    "CaddyServer",
    "EximServer",
    "JsseServer",
    "NatsServer",
    "TinyproxyServer",
    "compile_jsse_server",
    "gnutls_staple",
]

TINYPROXY = "/usr/bin/tinyproxy"
EXIM = "/usr/sbin/exim4"
CADDY = "/usr/bin/caddy"
NATS = "/usr/sbin/nats-server"
JAVA = "/usr/bin/java"
JAVAC = "/usr/bin/javac"
JSSE_SOURCE = Path(__file__).with_name("jsse") / "StaplingServer.java"
KEYSTORE_PASSWORD = "changeit"
GNUTLS_CLI = "gnutls-cli"


class TinyproxyServer(Server):
    """tinyproxy: an HTTP proxy (and CONNECT tunnel) that logs what it forwards."""

    program = TINYPROXY

    def __init__(
        self,
        directory: Path,
        *,
        deny: bool = False,
        filtered: bool = False,
        upstream: str | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(directory)
        self.deny, self.filtered, self.upstream = deny, filtered, upstream
        self.auth = auth
        self.config = directory / "tinyproxy.conf"
        self.access_log = directory / "tinyproxy.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        d = self.directory
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 10",
            f'LogFile "{self.access_log}"',
            "LogLevel Info",
            f'PidFile "{d}/tinyproxy.pid"',
            "MaxClients 20",
            "Allow 127.0.0.2" if self.deny else "Allow 127.0.0.1",
        ]
        if self.filtered:
            (d / "filter").write_text(".*\n")
            lines += [f'Filter "{d}/filter"', "FilterURLs On", "FilterExtended On"]
        if self.auth:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        if self.upstream:
            lines.append(f"Upstream http {self.upstream}")
        self.config.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [TINYPROXY, "-d", "-c", str(self.config)]

    def requests(self) -> list[str]:
        """The request lines the proxy received, e.g. 'GET http://127.0.0.1:8080/... HTTP/1.1'."""
        if not self.access_log.exists():
            return []
        text = self.access_log.read_text(errors="replace")
        return re.findall(r"Request \(file descriptor \d+\): (.+)", text)


class EximServer(Server):
    """Exim's SMTP daemon offering STARTTLS with the staple in `ocsp_file`.

    `guarded` writes `tls_ocsp_file` as `${if exists{FILE}{FILE}}` (what docs/integrations/
    exim.md recommends); otherwise as the plain path.
    """

    program = EXIM

    def __init__(
        self, directory: Path, *, cert: Path, key: Path, ocsp_file: Path, guarded: bool = True
    ) -> None:
        super().__init__(directory)
        self.cert, self.key, self.ocsp_file, self.guarded = cert, key, ocsp_file, guarded
        self.config = directory / "exim.conf"

    @property
    def error_log(self) -> Path:
        return self.directory / "log" / "mainlog"

    def write_config(self) -> None:
        d = self.directory
        for sub in ("spool", "log"):
            (d / sub).mkdir(exist_ok=True)
        staple = f"${{if exists{{{self.ocsp_file}}}{{{self.ocsp_file}}}}}"
        self.config.write_text(
            "keep_environment =\n"
            "exim_user = root\nexim_group = root\n"
            f"spool_directory = {d}/spool\nlog_file_path = {d}/log/%slog\n"
            f"pid_file_path = {d}/exim.pid\n"
            "primary_hostname = mail.example.test\n"
            f"daemon_smtp_ports = {self.port}\nlocal_interfaces = 127.0.0.1\n"
            "tls_advertise_hosts = *\n"
            f"tls_certificate = {self.cert}\ntls_privatekey = {self.key}\n"
            f"tls_ocsp_file = {staple if self.guarded else self.ocsp_file}\n"
            "acl_smtp_rcpt = refuse\n"
            "begin acl\nrefuse:\n  deny\n"
        )

    def command(self) -> list[str]:
        return [EXIM, "-C", str(self.config), "-bdf"]


def gnutls_staple(port: int, cafile: Path, save: Path) -> tuple[bool, bytes | None]:
    """gnutls-cli over SMTP STARTTLS with --ocsp (it checks a staple it gets): whether the
    handshake succeeded, and the staple it saved (None when none was sent)."""
    save.unlink(missing_ok=True)
    command = [
        GNUTLS_CLI, "--starttls-proto=smtp", "--ocsp", f"--x509cafile={cafile}",
        "--verify-hostname=mail.example.test", f"--save-ocsp={save}", "-p", str(port),
        "127.0.0.1",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ServerError(f"gnutls-cli got no answer from port {port}") from None
    staple = save.read_bytes() if save.exists() else None
    return "Handshake was completed" in result.stdout, staple or None


class CaddyServer(Server):
    """Caddy serving `cert`/`key` (loaded from files), with `ocsp_overrides` mapping the
    certificate's own responder URL `original` to `responder`. Its data, config and admin
    endpoint stay in the test's directory (the admin endpoint is off)."""

    program = CADDY

    def __init__(
        self, directory: Path, *, cert: Path, key: Path, original: str, responder: str
    ) -> None:
        super().__init__(directory)
        self.cert, self.key, self.original, self.responder = cert, key, original, responder
        self.config = directory / "caddy.json"

    def write_config(self) -> None:
        server = {
            "listen": [f"127.0.0.1:{self.port}"],
            "routes": [{"handle": [{"handler": "static_response", "body": "ok"}]}],
            "tls_connection_policies": [{}],
            "automatic_https": {"disable": True},
        }
        tls = {
            "certificates": {"load_files": [{"certificate": str(self.cert), "key": str(self.key)}]},
            "automation": {"policies": [{"ocsp_overrides": {self.original: self.responder}}]},
        }
        config = {
            "admin": {"disabled": True},
            "storage": {"module": "file_system", "root": str(self.directory / "data")},
            "apps": {"http": {"servers": {"test": server}}, "tls": tls},
        }
        self.config.write_text(json.dumps(config, indent=2))

    def command(self) -> list[str]:
        return [CADDY, "run", "--config", str(self.config)]

    def environment(self) -> dict[str, str]:
        d = str(self.directory)
        return {**os.environ, "HOME": d, "XDG_DATA_HOME": d, "XDG_CONFIG_HOME": d}


class NatsServer(Server):
    """nats-server requiring TLS with `cert`/`key`, stapling always (`ocsp { mode: always }`)
    from `responder`."""

    program = NATS

    def __init__(self, directory: Path, *, cert: Path, key: Path, responder: str) -> None:
        super().__init__(directory)
        self.cert, self.key, self.responder = cert, key, responder
        self.config = directory / "nats.conf"

    def write_config(self) -> None:
        self.config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'pid_file: "{self.directory}/nats.pid"\n'
            f'tls {{ cert_file: "{self.cert}", key_file: "{self.key}" }}\n'
            f'ocsp {{ mode: always, url: "{self.responder}" }}\n'
        )

    def command(self) -> list[str]:
        return [NATS, "-c", str(self.config)]


def compile_jsse_server(directory: Path) -> Path:
    """Compile tests/jsse/StaplingServer.java into `directory`; return that directory."""
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [JAVAC, "-d", str(directory), str(JSSE_SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise ServerError(f"javac failed:\n{result.stderr}")
    return directory


class JsseServer(Server):
    """The JSSE test server with the key and chain of `leaf`, stapling from `responder` in
    place of the certificate's own URL (`jdk.tls.stapling.responderOverride`)."""

    program = JAVA

    def __init__(self, directory: Path, *, leaf: Leaf, classes: Path, responder: str) -> None:
        super().__init__(directory)
        self.leaf, self.classes, self.responder = leaf, classes, responder
        self.keystore = directory / "server.p12"

    def write_config(self) -> None:
        self.keystore.write_bytes(
            pkcs12.serialize_key_and_certificates(
                b"server",
                self.leaf.key,  # type: ignore[arg-type]
                self.leaf.cert,
                list(self.leaf.chain),
                BestAvailableEncryption(KEYSTORE_PASSWORD.encode()),
            )
        )

    def command(self) -> list[str]:
        return [
            JAVA, "-cp", str(self.classes),
            "-Djdk.tls.server.enableStatusRequestExtension=true",
            f"-Djdk.tls.stapling.responderURI={self.responder}",
            "-Djdk.tls.stapling.responderOverride=true",
            "StaplingServer", str(self.keystore), KEYSTORE_PASSWORD, str(self.port),
        ]  # fmt: skip

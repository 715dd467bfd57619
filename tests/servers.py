"""Real TLS servers on loopback for tests, and what they staple.

`NginxServer`, `HAProxyServer` and `LighttpdServer` each run the real program as a child
process (never a daemon) with its own config file, pid file, logs and temporary files in a
directory of the test's, on a free port of 127.0.0.1; `start` returns once the port answers,
`stop` (or leaving the `with` block) ends it. A missing program fails loudly: the test setup
(`./dev test`) installs them.

`RedisServer` is a real redis-server for fleet tests; it keeps its port across a restart.

`staple_from(port, servername)` is what a client asking for a staple gets: the OCSP response
exactly as sent, read from `openssl s_client -msg` (the CertificateStatus message in TLS 1.2,
the status_request extension of the leaf's Certificate entry in TLS 1.3), or None.
"""

from __future__ import annotations

import abc
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from ports import free_port

__all__ = [
    "ApacheServer",
    "HAProxyServer",
    "LighttpdServer",
    "NginxServer",
    "RedisServer",
    "Server",
    "ServerError",
    "free_port",
    "haproxy_api",
    "staple_from",
]

NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
LIGHTTPD = "/usr/sbin/lighttpd"
REDIS = "/usr/bin/redis-server"
OPENSSL = "openssl"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_PORT_TRIES = 3
_IN_USE = "Address already in use"


class ServerError(RuntimeError):
    """A test server would not start, or could not be asked for its staple."""


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _answers_at(path: Path) -> bool:
    """Whether a unix socket at `path` takes connections."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class Server(abc.ABC):
    """A server program in the foreground as a child process; subclasses say how to run it."""

    program = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.log = directory / "output.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError(f"{self.program} is not running")
        return self.process.pid

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    def start(self) -> Self:
        """Start on a free port and wait until it answers; retry if the port was just taken."""
        if not Path(self.program).is_file():
            raise ServerError(f"{self.program} is missing: install it (./dev test does)")
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(_PORT_TRIES):
            self.choose_ports()
            if self._launch():
                return self
            if _IN_USE not in self.output():
                break
        raise ServerError(f"{self.program} did not start:\n{self.output()}")

    def choose_ports(self) -> None:
        self.port = free_port()

    def _launch(self) -> bool:
        """Run the program; True once its port answers, False if it exited first."""
        self.write_config()
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._close_log()
                return False
            if self.answers():
                return True
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"{self.program} did not answer on port {self.port} in time")

    def answers(self) -> bool:
        """Whether the server is up: by default, its port takes connections."""
        return _answers(self.port)

    def output(self) -> str:
        """What the program printed, and its error log."""
        texts = [p.read_text(errors="replace") for p in (self.log, self.error_log) if p.exists()]
        return "\n".join(texts)

    def stop(self) -> None:
        """Ask the program to stop, and kill it if it has not within a few seconds."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def signal(self, number: signal.Signals) -> None:
        if self.process is None:
            raise ServerError(f"{self.program} is not running")
        self.process.send_signal(number)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @abc.abstractmethod
    def write_config(self) -> None:
        """Write the server's configuration file into its directory."""

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    def environment(self) -> dict[str, str] | None:
        """The server's environment (None: the test's own)."""
        return None


class NginxServer(Server):
    """nginx serving `cert` with `ssl_stapling on`, the staple either from `stapling_file`
    (as mustaple delivers it) or fetched by nginx itself from `responder` (its own, lazy
    stapling, verified against `trusted`)."""

    program = NGINX

    def __init__(
        self,
        directory: Path,
        *,
        cert: Path,
        key: Path,
        stapling_file: Path | None = None,
        responder: str | None = None,
        trusted: Path | None = None,
        workers: int = 1,
    ) -> None:
        super().__init__(directory)
        if (stapling_file is None) == (responder is None):
            raise ValueError("give either stapling_file or responder (with trusted)")
        if responder is not None and trusted is None:
            raise ValueError("nginx's own stapling verifies responses: give trusted=")
        self.cert, self.key = cert, key
        self.stapling_file, self.responder, self.trusted = stapling_file, responder, trusted
        self.workers = workers
        self.config = directory / "nginx.conf"

    def _stapling(self) -> str:
        if self.stapling_file is not None:
            return f"ssl_stapling_file {self.stapling_file};"
        return (
            f"ssl_stapling_verify on; ssl_trusted_certificate {self.trusted}; "
            f"ssl_stapling_responder {self.responder}; resolver 127.0.0.1;"
        )

    def write_config(self) -> None:
        d = self.directory
        temp = " ".join(
            f"{kind}_temp_path {d}/{kind}_temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.config.write_text(
            f"daemon off; master_process on; worker_processes {self.workers}; user root;\n"
            f"pid {d}/nginx.pid; error_log {self.error_log} info;\n"
            "events { worker_connections 64; }\n"
            f"http {{ access_log off; {temp}\n"
            f"  server {{ listen 127.0.0.1:{self.port} ssl;\n"
            f"    ssl_certificate {self.cert}; ssl_certificate_key {self.key};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
            f"    ssl_stapling on; {self._stapling()}\n"
            '    location / { return 200 "ok\\n"; } } }\n'
        )

    def _options(self) -> list[str]:
        return ["-p", str(self.directory), "-c", str(self.config), "-e", str(self.error_log)]

    def command(self) -> list[str]:
        return [NGINX, *self._options()]

    @property
    def reload_command(self) -> str:
        """`nginx -s reload`: it checks the new configuration first and fails if it is bad."""
        return " ".join([NGINX, "-s", "reload", *self._options()])

    def reload(self) -> None:
        self.signal(signal.SIGHUP)

    def settle(self) -> None:
        """Wait until the workers from before a reload have gone: until then a new
        connection may still reach one of them and get what it had loaded."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        deadline = time.monotonic() + START_TIMEOUT
        while len(children.read_text().split()) > self.workers:
            if time.monotonic() > deadline:
                raise ServerError("nginx's old workers did not exit after the reload")
            time.sleep(0.02)


class HAProxyServer(Server):
    """HAProxy in master-worker mode: a TLS frontend with `crt pem` (certificate and key in one
    PEM; HAProxy reads `<pem>.ocsp` and `<pem>.issuer` at start), an admin stats socket both
    on a unix path (`.api_socket`) and on TCP (`.api_port`), and the master CLI."""

    program = HAPROXY

    def __init__(self, directory: Path, *, pem: Path) -> None:
        super().__init__(directory)
        self.pem = pem
        self.config = directory / "haproxy.cfg"
        # unix socket paths must stay short (108 bytes): not under pytest's deep tmp_path
        self._sockets = Path(tempfile.mkdtemp(prefix="mustaple-haproxy-"))
        self.api_socket = self._sockets / "admin.sock"
        self.master_socket = self._sockets / "master.sock"
        self.api_port = 0

    def choose_ports(self) -> None:
        super().choose_ports()
        self.api_port = free_port()

    def write_config(self) -> None:
        self.config.write_text(
            "global\n"
            f"    stats socket {self.api_socket} level admin\n"
            f"    stats socket ipv4@127.0.0.1:{self.api_port} level admin\n"
            "defaults\n"
            "    mode http\n"
            "    timeout connect 5s\n"
            "    timeout client 10s\n"
            "    timeout server 10s\n"
            "frontend tls\n"
            f"    bind 127.0.0.1:{self.port} ssl crt {self.pem}\n"
            "    http-request return status 200 content-type text/plain string ok\n"
        )

    def command(self) -> list[str]:
        return [HAPROXY, "-W", "-db", "-S", str(self.master_socket), "-f", str(self.config)]

    def answers(self) -> bool:
        """Up once every socket a test or a sink talks to takes connections: HAProxy binds
        them one after the other, and on a loaded machine the TLS port answered while the
        admin socket was not there yet."""
        ports = (self.port, self.api_port)
        paths = (self.api_socket, self.master_socket)
        sockets = all(map(_answers, ports)) and all(map(_answers_at, paths))
        return sockets and self.master_ready()

    def master_ready(self) -> bool:
        """Whether the master said its worker is loaded: only from then is it in the loop
        that takes a reload signal (a USR2 sent before was lost: the reload never came)."""
        return b"Loading success." in self.log.read_bytes()

    @property
    def reload_command(self) -> str:
        return f"kill -USR2 {self.pid}"

    def reload(self) -> None:
        """Master-worker reload: a new worker reads the config and the files again."""
        self.signal(signal.SIGUSR2)

    def worker_pid(self) -> int:
        """The pid of the worker that serves, as its stats socket says."""
        match = re.search(r"^Pid: (\d+)$", haproxy_api(self.api_socket, "show info"), re.M)
        if match is None:
            raise ServerError("HAProxy's `show info` has no Pid line")
        return int(match[1])

    def restart(self) -> None:
        """Stop, then start a new HAProxy, as `systemctl restart haproxy` does: it reads its
        files afresh, on new ports, with its unix sockets at the same paths."""
        super().stop()
        self.start()

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self._sockets, ignore_errors=True)


def haproxy_api(path: Path, command: str) -> str:
    """One command on an HAProxy stats socket, and its answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


class LighttpdServer(Server):
    """lighttpd with mod_openssl serving `cert`/`key`, stapling `stapling_file`."""

    program = LIGHTTPD

    def __init__(self, directory: Path, *, cert: Path, key: Path, stapling_file: Path) -> None:
        super().__init__(directory)
        self.cert, self.key, self.stapling_file = cert, key, stapling_file
        self.config = directory / "lighttpd.conf"

    def write_config(self) -> None:
        d = self.directory
        self.config.write_text(
            f'server.document-root = "{d}"\n'
            'server.bind = "127.0.0.1"\n'
            f"server.port = {self.port}\n"
            f'server.pid-file = "{d}/lighttpd.pid"\n'
            f'server.errorlog = "{self.error_log}"\n'
            'server.modules += ("mod_openssl")\n'
            'ssl.engine = "enable"\n'
            f'ssl.pemfile = "{self.cert}"\n'
            f'ssl.privkey = "{self.key}"\n'
            f'ssl.stapling-file = "{self.stapling_file}"\n'
        )

    def command(self) -> list[str]:
        return [LIGHTTPD, "-D", "-f", str(self.config)]

    @property
    def reload_command(self) -> str:
        return f"kill -USR1 {self.pid}"

    def reload(self) -> None:
        """Graceful restart in the same process: the config and the staple file read again."""
        self.signal(signal.SIGUSR1)


# --- What a client gets -----------------------------------------------------------------------

_RECEIVED = re.compile(r"^<<< TLS (1\.[0-3]), Handshake \[length [0-9a-f]+\], (\w+)$")
_HEX = re.compile(r"^\s+[0-9a-f]{2}( [0-9a-f]{2})*\s*$")
_STATUS_REQUEST = 5  # the TLS extension type
_OCSP = 1  # CertificateStatusType


def staple_from(
    port: int, servername: str = "www.example.test", starttls: str | None = None
) -> bytes | None:
    """The OCSP response the server on 127.0.0.1:`port` staples for `servername`, exactly as
    sent, or None when it sends none (after `-starttls PROTOCOL` when given). Raises
    ServerError when the handshake fails."""
    address = f"127.0.0.1:{port}"
    command = [OPENSSL, "s_client", "-connect", address, "-servername", servername, "-status"]
    if starttls is not None:
        command += ["-starttls", starttls]
    try:
        result = subprocess.run(
            [*command, "-msg"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ServerError(f"openssl s_client got no answer from {address}") from None
    text = result.stdout
    if "Certificate chain" not in text:
        raise ServerError(f"no TLS handshake with {address}: {result.stderr.strip()}")
    staple = _staple(_received(text))
    if staple is None and "OCSP response: no response sent" not in text:
        raise ServerError("openssl saw a staple that the handshake messages do not show")
    return staple


def _received(text: str) -> dict[tuple[str, str], bytes]:
    """The handshake messages the server sent, by (TLS version, name), as bytes."""
    messages: dict[tuple[str, str], bytes] = {}
    current: tuple[str, str] | None = None
    for line in text.splitlines():
        header = _RECEIVED.match(line)
        if header:
            current = (header[1], header[2])
            messages.setdefault(current, b"")
        elif current is not None and _HEX.match(line):
            messages[current] += bytes.fromhex(line)
        else:
            current = None
    return messages


def _staple(messages: dict[tuple[str, str], bytes]) -> bytes | None:
    status = messages.get(("1.2", "CertificateStatus"))
    if status is not None:
        return _certificate_status(status[4:])
    certificate = messages.get(("1.3", "Certificate"))
    return _leaf_status(certificate[4:]) if certificate is not None else None


def _leaf_status(body: bytes) -> bytes | None:
    """The status_request extension of the first entry of a TLS 1.3 Certificate message."""
    at = 1 + body[0] + 3  # request context, then the list's length
    at += 3 + int.from_bytes(body[at : at + 3])  # the leaf's DER
    extensions = body[at + 2 : at + 2 + int.from_bytes(body[at : at + 2])]
    while extensions:
        kind, size = int.from_bytes(extensions[:2]), int.from_bytes(extensions[2:4])
        if kind == _STATUS_REQUEST:
            return _certificate_status(extensions[4 : 4 + size])
        extensions = extensions[4 + size :]
    return None


def _certificate_status(body: bytes) -> bytes:
    """The response in a CertificateStatus structure (status type ocsp, 3-byte length)."""
    if body[0] != _OCSP:
        raise ServerError(f"CertificateStatus of type {body[0]}, not ocsp")
    return body[4 : 4 + int.from_bytes(body[1:4])]


APACHE = "/usr/sbin/apache2"
APACHE_MODULES = Path("/usr/lib/apache2/modules")


class ApacheServer(Server):
    """Apache httpd with mod_ssl serving `cert`/`key` (the chain after the leaf in `cert`), its
    own stapling on (`SSLUseStapling`): mod_ssl fetches the response itself from `responder`
    (`SSLStaplingForceURL`, whatever the certificate says) and keeps it in a shmcb cache in
    the directory, good answers for `cache_timeout` seconds, errors for `error_timeout`."""

    program = APACHE

    def __init__(
        self,
        directory: Path,
        *,
        cert: Path,
        key: Path,
        responder: str,
        responder_timeout: int = 5,
        cache_timeout: int = 3600,
        error_timeout: int = 600,
    ) -> None:
        super().__init__(directory)
        self.cert, self.key, self.responder = cert, key, responder
        self.responder_timeout = responder_timeout
        self.cache_timeout, self.error_timeout = cache_timeout, error_timeout
        self.config = directory / "apache2.conf"

    def _modules(self) -> str:
        return "".join(
            f"LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so\n"
            for name in ("mpm_event", "authz_core", "socache_shmcb", "ssl")
        )

    def write_config(self) -> None:
        d = self.directory
        self.config.write_text(
            f"ServerRoot {d}\n{self._modules()}"
            # Apache never serves as root: started as root, its workers become nobody
            "User nobody\nGroup nogroup\nServerName localhost\n"
            f"Listen 127.0.0.1:{self.port}\n"
            f"PidFile {d}/apache2.pid\nDefaultRuntimeDir {d}\nMutex file:{d} default\n"
            f"ErrorLog {self.error_log}\nLogLevel warn ssl:info\n"
            "StartServers 1\nServerLimit 1\nThreadsPerChild 4\nThreadLimit 4\n"
            "MaxRequestWorkers 4\nMinSpareThreads 1\nMaxSpareThreads 4\n"
            f"SSLStaplingCache shmcb:{d}/stapling(32768)\n"
            f"<VirtualHost 127.0.0.1:{self.port}>\n"
            "  SSLEngine on\n"
            f"  SSLCertificateFile {self.cert}\n  SSLCertificateKeyFile {self.key}\n"
            "  SSLUseStapling on\n"
            f"  SSLStaplingForceURL {self.responder}\n"
            f"  SSLStaplingResponderTimeout {self.responder_timeout}\n"
            f"  SSLStaplingStandardCacheTimeout {self.cache_timeout}\n"
            f"  SSLStaplingErrorCacheTimeout {self.error_timeout}\n"
            "  SSLStaplingReturnResponderErrors off\n"
            "  SSLStaplingFakeTryLater off\n"
            "</VirtualHost>\n"
        )

    def command(self) -> list[str]:
        return [APACHE, "-d", str(self.directory), "-f", str(self.config), "-DFOREGROUND"]


class RedisServer(Server):
    """redis-server on loopback; with `persist`, an append-only file fsynced on every write,
    so a restart keeps the data (without it, a restart starts empty). With `tls` (a PEM
    certificate for 127.0.0.1 and its key), it speaks TLS only, and `url` is a rediss:// URL
    trusting that certificate."""

    program = REDIS

    def __init__(
        self, directory: Path, *, persist: bool = True, tls: tuple[Path, Path] | None = None
    ) -> None:
        super().__init__(directory)
        self.persist, self.tls = persist, tls

    @property
    def url(self) -> str:
        if self.tls is None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[0]}"

    def choose_ports(self) -> None:
        """A free port the first time; the same port on a restart (the members keep it)."""
        if not self.port:
            self.port = free_port()

    def restart(self) -> None:
        self.stop()
        self.start()

    def write_config(self) -> None:
        ports = [f"port {self.port}"]
        if self.tls is not None:
            cert, key = self.tls
            ports = [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {cert}",
                f"tls-key-file {key}",
                f"tls-ca-cert-file {cert}",
                "tls-auth-clients no",
            ]
        lines = [
            "bind 127.0.0.1",
            *ports,
            f"dir {self.directory}",
            "daemonize no",
            'save ""',
            f"appendonly {'yes' if self.persist else 'no'}",
            "appendfsync always",
            "protected-mode yes",
            f"logfile {self.error_log}",
        ]
        (self.directory / "redis.conf").write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.program, str(self.directory / "redis.conf")]

"""More real programs on loopback for tests: an outbound HTTP proxy and a mail server.

Same shape as `servers.py`: each runs the real Debian program as a child process in the
foreground, with its own configuration, logs and spool in the test's directory, on a free port
of 127.0.0.1.

`TinyproxyServer` logs every request it forwards (`requests()` reads them back); `deny` makes it
refuse every client (403 Access denied), `filtered` refuses every URL (403 Filtered), and
`upstream` sends everything on to another proxy (a dead one gives 502), `auth` (user, password)
wants those credentials (407 without them).
"""

from __future__ import annotations

import re
from pathlib import Path

from servers import Server

__all__ = ["TinyproxyServer"]

TINYPROXY = "/usr/bin/tinyproxy"


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

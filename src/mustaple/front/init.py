"""`mustaple init`: from the servers' own configuration to a commented mustaple.toml.

It reads nginx, HAProxy, Apache and lighttpd configurations
(`mustaple.adapters.serverconf`), looks at every certificate they serve (must-staple, OCSP URL,
issuer), prints a table of what it found, writes a mustaple.toml with the right sinks, and
prints the exact lines to add to each server's configuration. It edits a server's
configuration only with `--apply`: each edited file is backed up first, the result is checked
with the server's own checker (`nginx -t`, `haproxy -c`, `lighttpd -tt`), and the backups are
put back when the checker refuses it.
It never contacts anything: an issuer that is only reachable over AIA is fetched by the keeper.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mustaple.adapters.files import read_input, write_atomic
from mustaple.adapters.serverconf import (
    ServerConf,
    Site,
    read_apache,
    read_haproxy,
    read_lighttpd,
    read_nginx,
)
from mustaple.core.certs import (
    ca_issuer_urls,
    display_name,
    find_issuer,
    is_must_staple,
    ocsp_urls,
    parse_certificates,
)
from mustaple.core.errors import InputError
from mustaple.core.render import shown

__all__ = [
    "CHECKERS",
    "DEFAULT_CONFS",
    "Edit",
    "Found",
    "Plan",
    "apply_edits",
    "make_edits",
    "make_plan",
    "print_edits",
    "print_table",
    "read_confs",
    "render_toml",
]

DEFAULT_CONFS = {
    "nginx": Path("/etc/nginx/nginx.conf"),
    "haproxy": Path("/etc/haproxy/haproxy.cfg"),
    "apache": Path("/etc/apache2/apache2.conf"),
    "lighttpd": Path("/etc/lighttpd/lighttpd.conf"),
}
READERS = {"nginx": read_nginx, "haproxy": read_haproxy, "apache": read_apache,
           "lighttpd": read_lighttpd}  # fmt: skip
FILE_SINK_SERVERS = ("nginx", "lighttpd")
HAPROXY_SOCKET = "/run/haproxy/admin.sock"
LOCAL_RESPONDER = "127.0.0.1:8008"
CHECKERS = {"nginx": ["nginx", "-t", "-c"], "haproxy": ["haproxy", "-c", "-f"],
            "lighttpd": ["lighttpd", "-tt", "-f"]}  # fmt: skip
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
APACHE_VHOST = (
    "SSLUseStapling on",
    f"SSLStaplingForceURL http://{LOCAL_RESPONDER}/ocsp",
    "SSLStaplingResponderTimeout 2",
    "SSLStaplingReturnResponderErrors off",
    "SSLStaplingFakeTryLater off",
    "SSLStaplingErrorCacheTimeout 60",
)
APACHE_SERVER = "SSLStaplingCache shmcb:${APACHE_RUN_DIR}/ssl_stapling(131072)"


@dataclass(frozen=True)
class Found:
    """One certificate file a server serves, and what mustaple can do with it."""

    cert: Path
    sites: tuple[tuple[str, Site], ...]  # (server, site)
    name: str = ""
    must_staple: bool = False
    ocsp_urls: tuple[str, ...] = ()
    issuer: str = ""  # where it is: "bundle", a file, "AIA"; "" when nowhere
    issuer_file: Path | None = None
    problem: str | None = None  # why it cannot be read

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(server for server, _ in self.sites))

    @property
    def usable(self) -> bool:
        return self.problem is None and bool(self.ocsp_urls) and bool(self.issuer)


@dataclass(frozen=True)
class Edit:
    """Lines to add to a server's configuration file after one line."""

    server: str
    file: Path
    after: int
    lines: tuple[str, ...]
    block: str


@dataclass(frozen=True)
class Plan:
    """What init found, the configuration it writes and the edits it proposes."""

    confs: tuple[ServerConf, ...]
    found: tuple[Found, ...]
    state_dir: Path

    def staple_file(self, found: Found) -> Path:
        return self.state_dir / "staples" / f"{found.name}.der"


# --- Looking -------------------------------------------------------------------------------------


def read_confs(given: dict[str, Path | None]) -> list[ServerConf]:
    """The configurations given, or, when none is, those at their Debian places."""
    chosen = {k: v for k, v in given.items() if v is not None}
    if not chosen:
        chosen = {k: v for k, v in DEFAULT_CONFS.items() if v.is_file()}
    if not chosen:
        raise InputError(
            "no server configuration found; give --nginx-conf, --haproxy-conf, --apache-conf "
            "or --lighttpd-conf"
        )
    return [READERS[server](path) for server, path in chosen.items()]


def make_plan(confs: Sequence[ServerConf], state_dir: Path) -> Plan:
    """Every certificate served, looked at once however many servers serve it."""
    sites: dict[Path, list[tuple[str, Site]]] = {}
    for conf in confs:
        for site in conf.sites:
            sites.setdefault(site.cert, []).append((conf.server, site))
    found = tuple(_look(cert, tuple(where)) for cert, where in sites.items())
    plan = Plan(tuple(confs), found, state_dir)
    return replace(plan, found=_one_file_per_name(plan))


def _one_file_per_name(plan: Plan) -> tuple[Found, ...]:
    """A certificate whose staple file (`{name}.der`) another usable certificate already
    has (an RSA and an ECDSA certificate of one name, in two blocks) is left out, saying so:
    the sink would give both one file, and a server would staple the other's answer."""
    owners: dict[str, Path] = {}
    kept = []
    for found in plan.found:
        writes = found.usable and bool(_file_sinks(plan, found))
        first = owners.setdefault(found.name, found.cert) if writes else found.cert
        if first != found.cert:
            why = (
                f"its staple file would be {found.name}.der, as for {first}, another "
                "certificate of the same name: give one of them a file sink of its own "
                "(a `path` with {stem} or {dir}, docs/configuration.md)"
            )
            kept.append(replace(found, problem=why))
        else:
            kept.append(found)
    return tuple(kept)


def _file_sinks(plan: Plan, found: Found) -> list[str]:
    """The sinks `found` is delivered to: not Apache (it asks the local responder), nor an
    nginx whose every block serving it serves other certificates too (the local responder
    again: `ssl_stapling_file` is one file per block)."""
    several = _blocks_of_several(plan)
    sinks = []
    for server in found.servers:
        blocks = [_block(server, site) for s, site in found.sites if s == server]
        if server == "apache" or all(block in several for block in blocks):
            continue
        sinks.append(server)
    return sinks


def _look(cert: Path, sites: tuple[tuple[str, Site], ...]) -> Found:
    if not _utf8(cert):
        problem = f"{shown(cert)}: its name is not UTF-8, which TOML cannot hold: rename it"
        return Found(cert, sites, problem=problem)
    try:
        chain = parse_certificates(read_input(cert, "certificate"), source=str(cert))
    except InputError as exc:
        return Found(cert, sites, problem=str(exc))
    leaf = chain[0]
    issuer, issuer_file = "", None
    if find_issuer(leaf, chain[1:]) is not None:
        issuer = "bundle"
    else:
        issuer_file = _issuer_beside(cert, leaf)
        if issuer_file is not None:
            issuer = str(issuer_file)
        elif ca_issuer_urls(leaf):
            issuer = "AIA (fetched at run time)"
    return Found(
        cert, sites, display_name(leaf), is_must_staple(leaf), tuple(ocsp_urls(leaf)), issuer,
        issuer_file,
    )  # fmt: skip


def _utf8(path: Path) -> bool:
    try:
        str(path).encode()
    except UnicodeEncodeError:  # a byte that is not UTF-8, kept by Python as a surrogate
        return False
    return True


def _issuer_beside(cert: Path, leaf: x509.Certificate) -> Path | None:
    """certbot's chain.pem, or HAProxy's <crt>.issuer, when it signed the certificate."""
    for candidate in (cert.parent / "chain.pem", Path(f"{cert}.issuer")):
        try:
            certs = parse_certificates(candidate.read_bytes(), source=str(candidate))
        except (OSError, InputError):
            continue
        if find_issuer(leaf, certs) is not None and _utf8(candidate):
            return candidate
    return None


# --- The table -----------------------------------------------------------------------------------


def print_table(plan: Plan, console: Console) -> None:
    """What was found; text from files is escaped, never read as rich markup."""
    table = Table(title="certificates served", title_justify="left")
    for column in ("certificate", "must-staple", "OCSP URL", "issuer", "served by"):
        table.add_column(column, overflow="fold")
    for found in plan.found:
        where = shown(
            "\n".join(f"{s}: {site.block} ({site.file}:{site.line})" for s, site in found.sites)
        )
        if found.problem:
            table.add_row(escape(shown(found.cert)), "?", escape(found.problem), "", escape(where))
            continue
        url = escape("\n".join(found.ocsp_urls)) or (
            "[red]none: can never be stapled[/]" if found.must_staple else "none: nothing to staple"
        )
        table.add_row(
            escape(f"{found.name}\n{shown(found.cert)}"),
            "[bold]yes[/]" if found.must_staple else "no",
            url,
            escape(found.issuer) or "[red]not found: set issuer[/]",
            escape(where),
        )
    console.print(table)
    for conf in plan.confs:
        for note in conf.notes:
            console.print(f"{conf.server}: {note}", markup=False)


# --- The configuration ---------------------------------------------------------------------------


def _q(text: str | Path) -> str:
    return json.dumps(str(text))  # a TOML basic string


def render_toml(plan: Plan) -> str:
    """A commented mustaple.toml for the certificates found."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# mustaple.toml, written by `mustaple init` on {now} from:",
        *(f"#   {conf.server}: {conf.main}" for conf in plan.confs),
        "# Check it with: mustaple run --check-config --config THIS_FILE",
        "# Every key is explained in docs/configuration.md.",
        "",
        f"state_dir = {_q(plan.state_dir)}",
    ]
    for found in plan.found:
        lines += ["", *_entry(plan, found)]
    for server in _plan_sinks(plan):
        lines += ["", *_sink(plan, server)]
    if _needs_local_responder(plan):
        lines += [
            "",
            "# Apache's mod_ssl, and an nginx block serving several certificates, ask this",
            "# local OCSP responder (docs/integrations/apache.md, nginx.md)",
            "[http]",
            f"listen = {_q(LOCAL_RESPONDER)}",
        ]
    return "\n".join(lines) + "\n"


def _needs_local_responder(plan: Plan) -> bool:
    usable = [f for f in plan.found if f.usable]
    return any("apache" in f.servers for f in usable) or bool(_blocks_of_several(plan))


def _entry(plan: Plan, found: Found) -> list[str]:
    served = ", ".join(f"{s} ({site.block})" for s, site in found.sites)
    head = [f"# {found.name or shown(found.cert)}: served by {served}"]
    body = [f"paths = [{_q(found.cert)}]"]
    if found.issuer_file is not None:
        body.append(f"issuer = {_q(found.issuer_file)}")
    sinks = _file_sinks(plan, found)
    if sinks != list(found.servers):
        head.append("# the local OCSP responder ([http]) answers for it where no sink is named")
    if set(sinks) != set(_plan_sinks(plan)):
        body.append(f"sinks = [{', '.join(_q(s) for s in sinks)}]")
    why = _unusable(found)
    if why:
        return [*head, f"# left out: {why}", "# [[certificates]]", *(f"# {b}" for b in body)]
    return [*head, "[[certificates]]", *body]


def _plan_sinks(plan: Plan) -> list[str]:
    return sorted({s for f in plan.found if f.usable for s in _file_sinks(plan, f)})


def _unusable(found: Found) -> str | None:
    if found.problem:
        return found.problem
    if not found.ocsp_urls:
        return (
            "must-staple without an OCSP URL: it can never be served correctly; replace it"
            if found.must_staple
            else "no OCSP URL, so there is nothing to staple"
        )
    if not found.issuer:
        return "no issuer in the bundle, beside it or over AIA: add issuer = FILE"
    return None


def _sink(plan: Plan, server: str) -> list[str]:
    template = plan.state_dir / "staples" / "{name}.der"
    if server == "haproxy":
        socket = _haproxy_socket(plan)
        return [
            "# HAProxy reads <crt>.ocsp at start; mustaple writes it and pushes every new",
            "# staple over the runtime API, no reload (docs/integrations/haproxy.md)",
            "[sinks.haproxy]",
            'type = "haproxy"',
            f"socket = {_q(socket)}",
            'running = "systemctl is-active --quiet haproxy"   # stopped, or a wrong socket?',
            'reload = "systemctl reload haproxy"   # only to take a staple away',
        ]
    keep = ['remove = "keep"   # nginx cannot reload without its stapling file'] * (
        server == "nginx"
    )
    reload = f'reload = "systemctl reload {server}"'
    if server == "lighttpd":  # its graceful reload reads the keys as server.username
        reload = 'reload = "systemctl restart lighttpd"   # not reload: see lighttpd.md'
    return [
        f"# {server} staples the file named in its configuration (docs/integrations/{server}.md)",
        f"[sinks.{server}]",
        'type = "file"',
        f"path = {_q(template)}",
        reload,
        f'running = "systemctl is-active --quiet {server}"   # prime before it starts: no reload',
        *keep,
    ]


def _haproxy_socket(plan: Plan) -> str:
    conf = next((c for c in plan.confs if c.server == "haproxy"), None)
    socket = conf.admin_socket if conf is not None else None
    return (socket or HAPROXY_SOCKET).removeprefix("unix@")


# --- What to add to each server ------------------------------------------------------------------


def make_edits(plan: Plan) -> tuple[list[Edit], list[str]]:
    """The lines to add to the servers' files, and advice that is not an edit."""
    edits: dict[tuple[Path, int], Edit] = {}
    advice: list[str] = []
    several = _blocks_of_several(plan)
    for found in plan.found:
        if not found.usable:
            continue
        for server, site in found.sites:
            count = several.get(_block(server, site), 1)
            if count > 1:
                advice.append(
                    f"nginx: {site.file} ({site.block}) serves {count} certificates, and nginx "
                    "staples one file for all of them: add `ssl_stapling on;` and "
                    f"`ssl_stapling_responder http://{LOCAL_RESPONDER}/ocsp;` there instead "
                    "(nginx then asks mustaple's local responder for each certificate: "
                    "docs/integrations/nginx.md)"
                )
                continue
            edit = _site_edit(plan, found, server, site, advice)
            if edit is not None:
                edits.setdefault((edit.file, edit.after), edit)
    for conf in plan.confs:
        if conf.server == "haproxy" and conf.sites and conf.admin_socket is None:
            line = f"    stats socket {HAPROXY_SOCKET} mode 660 level admin"
            edits[(conf.main, conf.global_line or 0)] = Edit(
                "haproxy", conf.main, conf.global_line or 0,
                (line,) if conf.global_line else ("global", line), "global",
            )  # fmt: skip
        if conf.server == "apache" and conf.sites:
            advice.append(f"apache: once, at server level: {APACHE_SERVER}")
    return sorted(edits.values(), key=lambda e: (str(e.file), e.after)), list(dict.fromkeys(advice))


_Block = tuple[str, Path, int]  # a server, and where its block's certificates are named


def _block(server: str, site: Site) -> _Block:
    """The block `site` is in: its certificates' last line (`Site.line`) tells two blocks
    apart, where their labels (`server NAME`, or `server` without a name) may be alike."""
    return server, site.file, site.line


def _blocks_of_several(plan: Plan) -> dict[_Block, int]:
    """The nginx blocks that serve more than one certificate, and how many: a staple file
    cannot serve them (`ssl_stapling_file` is one file for every certificate of the block)."""
    blocks: dict[_Block, set[Path]] = {}
    for found in plan.found:
        for server, site in found.sites:
            if server == "nginx":
                blocks.setdefault(_block(server, site), set()).add(found.cert)
    return {block: len(certs) for block, certs in blocks.items() if len(certs) > 1}


def _site_edit(plan: Plan, found: Found, server: str, site: Site, advice: list[str]) -> Edit | None:
    staple = plan.staple_file(found)
    pad = site.indent
    if server == "nginx":
        if site.stapling_file is not None:
            if site.stapling_file != str(staple):
                advice.append(
                    f"nginx: {site.file}:{site.line} ({site.block}) already staples from "
                    f"{site.stapling_file}; mustaple writes {staple}"
                )
            return None
        lines = ([] if site.stapling_on else [f"{pad}ssl_stapling on;"]) + [
            f"{pad}ssl_stapling_file {staple};"
        ]
        if not site.alone:  # after that line would be outside the block
            wanted = " ".join(line.strip() for line in lines)
            advice.append(
                f"nginx: {site.file}:{site.line} ({site.block}): more follows the block's last "
                f"ssl_certificate on its line; add there by hand: {wanted}"
            )
            return None
        return Edit(server, site.file, site.line, tuple(lines), site.block)
    if server == "lighttpd":
        if site.stapling_file is not None:
            return None
        return Edit(server, site.file, site.line, (f'{pad}ssl.stapling-file = "{staple}"',),
                    site.block)  # fmt: skip
    if server == "apache":
        return Edit(server, site.file, site.line, tuple(pad + d for d in APACHE_VHOST), site.block)
    advice.append(
        f"haproxy: nothing to add for {found.cert}: HAProxy loads {found.cert}.ocsp at start, "
        "and mustaple writes it"
    )
    return None


def print_edits(edits: Sequence[Edit], advice: Sequence[str], echo: Callable[[str], None]) -> None:
    if not edits and not advice:
        echo("Nothing to add to the servers' configuration.")
    for edit in edits:
        where = f"after line {edit.after}" if edit.after else "at the top"
        echo(f"\n{edit.server}: {edit.file}, {where} ({edit.block}):")
        echo("\n".join(edit.lines))
    if advice:
        echo("")
    for line in advice:
        echo(line)


# --- --apply -------------------------------------------------------------------------------------


def apply_edits(
    server: str, main: Path, edits: Sequence[Edit], backups_dir: Path
) -> tuple[bool, str]:
    """Back up, edit, check with the server's checker; put the backups back if it refuses.

    The backups go to `backups_dir` (under the state directory, never beside the files: an
    `include sites-enabled/*;` would load a backup there as configuration). A file reached
    through a symlink (Debian's sites-enabled/) is edited where it is, the link kept; its bytes
    are kept as they are, whatever their encoding. A file that cannot be backed up or written
    raises InputError, every file as it was."""
    by_file: dict[Path, list[Edit]] = {}
    for edit in edits:
        by_file.setdefault(edit.file.resolve(), []).append(edit)
    backups: dict[Path, Path] = {}
    try:
        for file in sorted(by_file):
            backup = backups_dir / file.relative_to(file.anchor)
            backup.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, backup)
            _own_as(backup, file.stat())
            backups[file] = backup
        for file, mine in by_file.items():
            _insert(file, mine)
    except OSError as exc:
        _restore(backups, backups_dir)
        raise InputError(
            f"{exc.filename}: cannot back up or edit ({exc.strerror}); every file is as it was"
        ) from None
    ok, said = _check(server, main)
    if ok:
        return True, f"{server}: {said}; backups: {', '.join(map(str, backups.values()))}"
    _restore(backups, backups_dir)
    return False, f"{server}: its checker refused the change, so it was undone: {said}"


def _insert(file: Path, edits: Sequence[Edit]) -> None:
    """The edits in `file`, its mode, owner and group kept (a file the server's user owns),
    with its line ends (CRLF in a file written on Windows)."""
    lines = file.read_bytes().splitlines(keepends=True)
    end = b"\r\n" if lines and lines[0].endswith(b"\r\n") else b"\n"
    for edit in sorted(edits, key=lambda e: -e.after):  # bottom up: line numbers stay true
        lines[edit.after : edit.after] = [line.encode() + end for line in edit.lines]
    info = file.stat()
    write_atomic(file, b"".join(lines), mode=info.st_mode & 0o777)
    _own_as(file, info)


def _own_as(path: Path, info: os.stat_result) -> None:
    """`path` owned as `info` says (only root may give a file away: others keep theirs)."""
    if os.geteuid() == 0:
        os.chown(path, info.st_uid, info.st_gid)


def _restore(backups: dict[Path, Path], backups_dir: Path) -> None:
    """Every file as it was; the backups (made for this run only) go."""
    for file, backup in backups.items():
        if backup.exists():
            shutil.copy2(backup, file)  # over the file: its owner stays
    shutil.rmtree(backups_dir, ignore_errors=True)


def _check(server: str, main: Path) -> tuple[bool, str]:
    main = main.absolute()  # nginx -c takes a relative path from its own prefix, not from here
    program, *args = CHECKERS[server]
    found = shutil.which(program, path=f"{os.environ.get('PATH', '')}:{_SBIN}")
    command = " ".join([program, *args, str(main)])
    if found is None:
        return False, f"{program} not found, so the change cannot be checked"
    try:
        done = subprocess.run(
            [found, *args, str(main)], capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"`{command}` did not finish in 60 s"
    output = (done.stderr + done.stdout).strip().splitlines()
    last = next((line for line in output if "emerg" in line or "ALERT" in line), None)
    summary = last or (output[-1] if output else f"exit status {done.returncode}")
    return done.returncode == 0, f"`{command}`: {summary}"

"""Read TLS servers' own configuration files: where does each one serve a certificate from?

`read_nginx`, `read_haproxy`, `read_apache` and `read_lighttpd` each take the server's main
configuration file (for nginx, also the saved output of `nginx -T`), follow its includes, and
return a `ServerConf`: every place (`Site`) a certificate file is served from, with the file
and line of the directive, so that `mustaple.front.init` can say where to add the stapling lines.
They only read files; anything they cannot follow (a certificate path made of variables, an
`include_shell`) is kept as a note, never guessed. Unreadable files raise `InputError`.
"""

from __future__ import annotations

import fnmatch
import glob
import itertools
import os
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from mustaple.adapters.files import MAX_INPUT, read_input
from mustaple.core.errors import InputError

__all__ = [
    "ServerConf",
    "Site",
    "read_apache",
    "read_haproxy",
    "read_lighttpd",
    "read_nginx",
]

NGINX_DUMP_HEADER = re.compile(r"^# configuration file (.+):$", re.M)
MAX_INCLUDE_DEPTH = 64  # files included in one another: deeper is a loop through links
_HAPROXY_SECTIONS = (
    "global", "defaults", "frontend", "backend", "listen", "peers", "resolvers", "userlist",
    "program", "http-errors", "ring", "mailers", "cache",
)  # fmt: skip
_HAPROXY_NOT_CERTS = (".key", ".ocsp", ".issuer", ".sctl")


@dataclass(frozen=True)
class Site:
    """One place a server serves a certificate from."""

    cert: Path  # absolute, as written: symlinks (certbot's live/) are kept, not resolved
    file: Path  # the configuration file holding the directive
    line: int  # the directive's last line, 1-based: new lines go after it
    block: str  # e.g. "server example.org", "frontend https", "<VirtualHost *:443>"
    indent: str = ""
    stapling_file: str | None = None  # nginx, lighttpd: the one the block already names
    stapling_on: bool = False  # nginx: `ssl_stapling on` already in the block
    alone: bool = True  # the directive ends its line (a one-line block: new lines cannot go after)


@dataclass
class ServerConf:
    """What one server's configuration says about its certificates."""

    server: str  # nginx, haproxy, apache, lighttpd
    main: Path
    sites: list[Site] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    admin_socket: str | None = None  # haproxy: a `stats socket ... level admin`
    global_line: int | None = None  # haproxy: the `global` line, to add a socket after it


class _Files:
    """Configuration texts by path: from the file system, or from `nginx -T` output."""

    def __init__(self, dump: dict[Path, str] | None = None) -> None:
        self.dump = dump

    def read(self, path: Path) -> str:
        """The text of `path` (`-`: standard input), bounded like every input read: a device
        or a FIFO is one line, never a wait or an endless read."""
        if str(path) == "-":
            data = sys.stdin.buffer.read(MAX_INPUT + 1)
            if len(data) > MAX_INPUT:
                raise InputError("-: the configuration on standard input is too large")
            return data.decode(errors="replace")
        if self.dump is not None:
            if path not in self.dump:
                raise InputError(f"{path}: not in the `nginx -T` output")
            return self.dump[path]
        return read_input(path, "configuration").decode(errors="replace")

    def glob(self, pattern: Path) -> list[Path]:
        if self.dump is not None:  # as glob would match: a '*' stops at a '/'
            return sorted(p for p in self.dump if _glob_match(p, pattern))
        if glob.has_magic(str(pattern)):
            return sorted(Path(p) for p in glob.glob(str(pattern)))
        return [pattern]


def _glob_match(path: Path, pattern: Path) -> bool:
    parts = path.parts
    wanted = pattern.parts
    return len(parts) == len(wanted) and all(
        fnmatch.fnmatchcase(part, want) for part, want in zip(parts, wanted, strict=True)
    )


def _absolute(base: Path, value: str) -> Path:
    """`value` relative to `base` (itself relative to the current directory when it is, as
    a relative --nginx-conf), made absolute without resolving symlinks."""
    return Path(os.path.abspath(base / value))


# --- nginx ----------------------------------------------------------------------------------------


@dataclass
class _Stmt:
    name: str
    args: list[str]
    file: Path
    line: int  # of the terminating ";" or "{"
    indent: str
    children: list[_Stmt] | None = None
    alone: bool = True  # nothing follows it on its last line: lines may be added after it


# a "#" starts a comment where a token could start; inside a word it is the word's (nginx's
# ngx_conf_read_token: a path such as /etc/ssl/site#1/fullchain.pem)
_NGINX_TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<comment>\#[^\n]*)|(?P<punct>[;{}])"""
    r"""|"(?P<dq>(?:\\.|[^"\\])*)"|'(?P<sq>(?:\\.|[^'\\])*)'"""
    r"""|(?P<word>(?:\\.|[^\s;{}"'#])(?:\\.|[^\s;{}"'])*)"""
)


def _nginx_tokens(text: str) -> Iterator[tuple[str, int, bool]]:
    """(token, line, is_punctuation) for an nginx configuration text."""
    line = 1
    for match in _NGINX_TOKEN.finditer(text):
        kind = match.lastgroup or ""
        if kind == "punct":
            yield match.group(), line, True
        elif kind in ("dq", "sq", "word"):
            yield match.group(kind), line, False
        line += match.group().count("\n")


def _nginx_parse(text: str, file: Path) -> list[_Stmt]:
    lines = text.splitlines()
    stack: list[list[_Stmt]] = [[]]
    words: list[tuple[str, int]] = []
    last: _Stmt | None = None  # the statement ended last, until a token follows on its line
    for token, line, punct in _nginx_tokens(text):
        if last is not None and line == last.line:
            last.alone = False
        last = None
        if not punct:
            words.append((token, line))
            continue
        if token == "}":
            if len(stack) == 1:
                raise InputError(f"{file}:{line}: unexpected '}}'")
            stack.pop()
            words = []
            continue
        if not words:
            continue
        first = lines[words[0][1] - 1]
        indent = first[: len(first) - len(first.lstrip())]
        stmt = _Stmt(words[0][0], [w for w, _ in words[1:]], file, line, indent)
        stack[-1].append(stmt)
        last = stmt
        words = []
        if token == "{":
            stmt.children = []
            stack.append(stmt.children)
    return stack[0]


def read_nginx(path: Path) -> ServerConf:
    """nginx's configuration from its main file, or from `nginx -T` output (saved, or `-`:
    standard input)."""
    text = _Files().read(path)
    dump = _nginx_dump(text)
    files = _Files(dump)
    main = next(iter(dump)) if dump else path
    conf = ServerConf("nginx", main)
    prefix = main.parent
    _nginx_walk(_nginx_parse(files.read(main), main), conf, files, prefix, "main", chain=_top(main))
    return conf


def _nginx_dump(text: str) -> dict[Path, str] | None:
    """The files of `nginx -T` output, the main one first; None for a plain config file."""
    parts = NGINX_DUMP_HEADER.split(text)
    if len(parts) < 3:
        return None
    # only the header's own line end: a file's leading blank lines keep its line numbers
    return {Path(parts[i]): parts[i + 1].removeprefix("\n") for i in range(1, len(parts) - 1, 2)}


def _nginx_included(
    stmts: list[_Stmt], files: _Files, prefix: Path, chain: tuple[Path, ...]
) -> list[_Stmt]:
    """`stmts` with the statements of the files they include, as nginx reads them there."""
    out: list[_Stmt] = []
    for stmt in stmts:
        out.append(stmt)
        if stmt.name == "include" and stmt.args:
            for found in files.glob(_absolute(prefix, stmt.args[0])):
                inner = _entering(chain, found, (stmt.file, stmt.line))
                out += _nginx_included(_nginx_parse(files.read(found), found), files, prefix, inner)
    return out


def _nginx_walk(
    stmts: list[_Stmt],
    conf: ServerConf,
    files: _Files,
    prefix: Path,
    context: str,
    *,
    chain: tuple[Path, ...],
) -> None:
    block_certs = [s for s in stmts if s.name == "ssl_certificate"]
    settings = _nginx_included(stmts, files, prefix, chain)  # a snippet may set stapling
    stapling_file = next(
        (s.args[0] for s in settings if s.name == "ssl_stapling_file" and s.args), None
    )
    stapling_on = any(s.name == "ssl_stapling" and s.args[:1] == ["on"] for s in settings)
    names = next((s.args for s in stmts if s.name == "server_name"), [])
    block = f"server {' '.join(names)}".strip() if context == "server" else context
    for stmt in block_certs:
        value = stmt.args[0] if stmt.args else ""
        if "$" in value or value.startswith("data:") or not value:
            conf.notes.append(f"{stmt.file}:{stmt.line}: ssl_certificate {value!r} skipped")
            continue
        last = block_certs[-1]
        site = Site(_absolute(prefix, value), last.file, last.line, block, last.indent)
        site = replace(site, stapling_file=stapling_file, stapling_on=stapling_on)
        conf.sites.append(replace(site, alone=last.alone))
    for stmt in stmts:
        if stmt.name == "include" and stmt.args:
            for found in files.glob(_absolute(prefix, stmt.args[0])):
                inner = _entering(chain, found, (stmt.file, stmt.line))
                parsed = _nginx_parse(files.read(found), found)
                _nginx_walk(parsed, conf, files, prefix, context, chain=inner)
        elif stmt.children is not None and stmt.name in ("http", "server"):
            _nginx_walk(stmt.children, conf, files, prefix, stmt.name, chain=chain)


def _top(path: Path) -> tuple[Path, ...]:
    """The files being read when the main one is (`_entering`)."""
    return (Path(os.path.abspath(path)),)


def _entering(chain: tuple[Path, ...], found: Path, at: tuple[Path, int]) -> tuple[Path, ...]:
    """The files being read, `chain`, with `found` (included at FILE, LINE `at`), or
    InputError when it is one of them (an include loop: the server could not read it
    either) or when includes nest deeper than MAX_INCLUDE_DEPTH."""
    found = Path(os.path.abspath(found))
    if found in chain:
        loop = " includes ".join(str(path) for path in (*chain[chain.index(found) :], found))
        raise InputError(f"{at[0]}:{at[1]}: an include loop: {loop}; remove the include")
    if len(chain) >= MAX_INCLUDE_DEPTH:
        raise InputError(
            f"{at[0]}:{at[1]}: includes nested more than {MAX_INCLUDE_DEPTH} deep (a loop "
            "through links?); include fewer levels"
        )
    return (*chain, found)


# --- HAProxy --------------------------------------------------------------------------------------


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return line.split("#", 1)[0].split()


def read_haproxy(path: Path) -> ServerConf:
    """HAProxy's configuration file: `bind ... crt FILE|DIR` and `crt-list FILE`."""
    conf = ServerConf("haproxy", path)
    crt_base = Path("/")  # HAProxy reads relative paths from its working directory
    section = ""
    for number, line in enumerate(_Files().read(path).splitlines(), 1):
        words = _words(line)
        if not words:
            continue
        if words[0] in _HAPROXY_SECTIONS:
            section = " ".join(words[:2])
            if words[0] == "global":
                conf.global_line = number
        elif words[0] == "crt-base" and len(words) > 1:
            crt_base = _absolute(Path("/"), words[1])
        elif words[:2] == ["stats", "socket"] and "admin" in words:
            conf.admin_socket = conf.admin_socket or words[2]
        elif words[0] == "bind":
            for cert in _haproxy_bind_certs(words, crt_base, conf):
                conf.sites.append(Site(cert, path, number, section))
    return conf


def _haproxy_bind_certs(words: list[str], crt_base: Path, conf: ServerConf) -> Iterator[Path]:
    for option, value in itertools.pairwise(words):
        if option == "crt":
            yield from _haproxy_crt(_absolute(crt_base, value))
        elif option == "crt-list":
            listing = _absolute(crt_base, value)
            for entry in _Files().read(listing).splitlines():
                first = _words(entry)[:1]
                if first:
                    yield from _haproxy_crt(_absolute(crt_base, first[0]))


def _haproxy_crt(path: Path) -> Iterator[Path]:
    """A `crt` file, or every certificate file of a `crt` directory (as HAProxy loads them)."""
    if not path.is_dir():
        yield path
        return
    for child in sorted(path.iterdir()):
        if child.is_file() and child.suffix not in _HAPROXY_NOT_CERTS:
            yield child


# --- Apache ---------------------------------------------------------------------------------------


def read_apache(path: Path) -> ServerConf:
    """Apache httpd's configuration: `SSLCertificateFile` in every file it includes."""
    conf = ServerConf("apache", path)
    state = _ApacheState(root=path.parent)
    _apache_file(path, conf, state, _top(path))
    return conf


@dataclass
class _ApacheState:
    root: Path
    defines: dict[str, str] = field(default_factory=dict)
    block: str = "server"


def _apache_lines(text: str) -> Iterator[tuple[int, str]]:
    """(last line number, logical line) with backslash continuations joined."""
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        yield number, pending + raw
        pending = ""


def _apache_file(
    path: Path, conf: ServerConf, state: _ApacheState, chain: tuple[Path, ...]
) -> None:
    for number, line in _apache_lines(_Files().read(path)):
        words = _words(re.sub(r"\$\{(\w+)\}", lambda m: state.defines.get(m[1], m[0]), line))
        if not words:
            continue
        key = words[0].lower()
        if key.startswith("<virtualhost"):
            state.block = line.strip()
        elif key == "</virtualhost>":
            state.block = "server"
        elif key == "servername" and len(words) > 1 and state.block.startswith("<"):
            state.block = f"{state.block} {words[1]}"
        elif key == "serverroot" and len(words) > 1:
            state.root = Path(words[1])
        elif key == "define" and len(words) > 2:
            state.defines[words[1]] = words[2]
        elif key in ("include", "includeoptional") and len(words) > 1:
            for found in _apache_included(_absolute(state.root, words[1])):
                if found.is_file() or key == "include":
                    _apache_file(found, conf, state, _entering(chain, found, (path, number)))
        elif key == "sslcertificatefile" and len(words) > 1:
            _apache_site(conf, state, (path, number, line), words[1])


def _apache_included(pattern: Path) -> list[Path]:
    """The files an Include names: a glob, a file, or a directory (every file in it, in
    alphabetical order, as Apache reads it)."""
    found = []
    for path in _Files().glob(pattern):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file())
        else:
            found.append(path)
    return found


def _apache_site(
    conf: ServerConf, state: _ApacheState, at: tuple[Path, int, str], value: str
) -> None:
    path, number, line = at
    if "${" in value:
        conf.notes.append(f"{path}:{number}: SSLCertificateFile {value!r} skipped")
        return
    indent = line[: len(line) - len(line.lstrip())]
    conf.sites.append(Site(_absolute(state.root, value), path, number, state.block, indent))


# --- lighttpd -------------------------------------------------------------------------------------


_LIGHTTPD_SET = re.compile(r'^\s*(ssl\.pemfile|ssl\.stapling-file)\s*\+?=\s*"([^"]*)"')
_LIGHTTPD_INCLUDE = re.compile(r'^\s*include\s+"([^"]+)"')
_DEBIAN_INCLUDE_SHELL = "/usr/share/lighttpd/include-conf-enabled.pl"
_DEBIAN_NO_CERTS = ("/usr/share/lighttpd/use-ipv6.pl", "/usr/share/lighttpd/create-mime.conf.pl")


def read_lighttpd(path: Path) -> ServerConf:
    """lighttpd's configuration: `ssl.pemfile` in every block of every included file."""
    conf = ServerConf("lighttpd", path)
    _lighttpd_file(path, conf, path.parent, ["global"], _top(path))
    return conf


def _lighttpd_file(
    path: Path, conf: ServerConf, base: Path, blocks: list[str], chain: tuple[Path, ...]
) -> None:
    pending: dict[str, Site] = {}
    stapling: dict[str, str] = {}  # a block's ssl.stapling-file, before or after its pemfile
    for number, line in enumerate(_Files().read(path).splitlines(), 1):
        code = _without_comment(line)
        include = _LIGHTTPD_INCLUDE.match(code)
        setting = _LIGHTTPD_SET.match(code)
        if include:
            for found in _Files().glob(_absolute(base, include[1])):  # as lighttpd: from
                inner = _entering(chain, found, (path, number))  # the main file's directory
                _lighttpd_file(found, conf, base, blocks, inner)
        elif code.strip().startswith("include_shell"):
            _lighttpd_shell(code, (path, number), conf, base, (blocks, chain))
        elif code.rstrip().endswith("{"):
            blocks.append(code.rstrip()[:-1].strip())
        elif code.strip() == "}" and len(blocks) > 1:
            block = blocks.pop()
            _lighttpd_close(conf, pending.pop(block, None), stapling.pop(block, None))
        elif setting and setting[1] == "ssl.pemfile":
            indent = line[: len(line) - len(line.lstrip())]
            site = Site(_absolute(base, setting[2]), path, number, blocks[-1], indent)
            pending[blocks[-1]] = site
        elif setting:
            stapling[blocks[-1]] = setting[2]
    for block, site in pending.items():
        _lighttpd_close(conf, site, stapling.get(block))


def _without_comment(line: str) -> str:
    """A lighttpd line without its comment: from the first '#' outside a quoted string."""
    quoted = escaped = False
    for at, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:at]
    return line


def _lighttpd_close(conf: ServerConf, site: Site | None, stapling_file: str | None) -> None:
    if site is not None:
        conf.sites.append(replace(site, stapling_file=stapling_file or site.stapling_file))


def _lighttpd_shell(
    code: str,
    at: tuple[Path, int],
    conf: ServerConf,
    base: Path,
    reading: tuple[list[str], tuple[Path, ...]],
) -> None:
    """Debian's include_shell of conf-enabled/ is read as that directory; others are noted
    (`reading`: the blocks open, and the files being read)."""
    path, number = at
    blocks, chain = reading
    if _DEBIAN_INCLUDE_SHELL in code:
        for found in _Files().glob(path.parent / "conf-enabled" / "*.conf"):
            _lighttpd_file(found, conf, base, blocks, _entering(chain, found, at))
    elif not any(script in code for script in _DEBIAN_NO_CERTS):
        conf.notes.append(f"{path}:{number}: {code.strip()} not followed")

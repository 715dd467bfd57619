"""The sandbox of examples/mustaple.service, made with the kernel features systemd uses, for
tests that run real `mustaple` processes in it (as root: CI runs as root).

There is no systemd here to start the unit, so `Sandbox.command` builds what systemd would
set up from the unit's own lines, read from the file (`read_unit`), so that the unit and the
test cannot drift apart:

- a mount namespace (`unshare -m`, private propagation: PrivateMounts=);
- PrivateTmp=: an empty tmpfs on /tmp and on /var/tmp;
- ProtectSystem=strict: every mount read-only except /dev, /proc and /sys (and the private
  /tmp); StateDirectory= and ReadWritePaths= bound read-write again;
- ProtectHome=true: /home, /root and /run/user replaced by an empty read-only directory of
  mode 000, as systemd's "inaccessible" one;
- ProtectProc= and ProcSubset=: a new /proc mounted with `hidepid=` and `subset=`;
- NoNewPrivileges= and CapabilityBoundingSet=: `setpriv --no-new-privs --bounding-set`
  (root's capabilities after exec are the bounding set, as under systemd);
- MemoryDenyWriteExecute=: the kernel's PR_SET_MDWE (Linux 6.3 and later), what systemd 254
  and later use; kept across exec and by every child.

The server's file system is a directory of the test's (`root`): the unit's path P is
`root/P` here (`Sandbox.path`). It stays at the same path inside, so that a configuration
written outside works inside and a server outside sees the staples written inside; it is
read-only there like the rest, except the unit's writable paths. The interpreter, mustaple's
code and its dependencies are bound read-only under `root/opt`, as a server's /usr and
/opt/mustaple are: the test's own interpreter may live under /root (pyenv), which
ProtectHome= hides, and its code under /tmp, which PrivateTmp= hides.

Not emulated (checked by `systemd-analyze verify` only): SystemCallFilter=,
RestrictAddressFamilies=, RestrictNamespaces=, RestrictRealtime=, RestrictSUIDSGID=,
LockPersonality=, SystemCallArchitectures= (seccomp filters), PrivateDevices=, the
Protect{Kernel*,ControlGroups,Clock,Hostname}= mounts and filters, RemoveIPC=, UMask=.
"""

from __future__ import annotations

import shlex
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import mustaple

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples/mustaple.service"

# PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: <linux/prctl.h>
_MDWE = (
    "import ctypes, os, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:\n"
    "    sys.exit('PR_SET_MDWE: ' + os.strerror(ctypes.get_errno()))\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)
_API = ("/proc", "/sys", "/dev")
_HOMES = ("/home", "/root", "/run/user")


@dataclass(frozen=True)
class Unit:
    """The [Service] lines of a unit file: each key's values in order, an empty assignment
    clearing those before it, as systemd reads them."""

    settings: dict[str, list[str]]

    def values(self, key: str) -> list[str]:
        return self.settings.get(key, [])

    def one(self, key: str) -> str | None:
        """The last value of `key`, None when it is not set."""
        values = self.values(key)
        return values[-1] if values else None

    def yes(self, key: str) -> bool:
        return self.one(key) in ("yes", "true", "on", "1")

    def writable(self) -> list[tuple[str, bool]]:
        """(path, required) for each path the unit may write below: its StateDirectory=
        (systemd creates it) and each of its ReadWritePaths= (a "-" prefix: not required)."""
        states = [word for value in self.values("StateDirectory") for word in value.split()]
        found = [(f"/var/lib/{name}", True) for name in states]
        for value in self.values("ReadWritePaths"):
            for word in value.split():
                found.append((word.lstrip("-+"), not word.startswith("-")))
        return found

    def capabilities(self) -> list[str]:
        """The capabilities CapabilityBoundingSet= keeps (an empty line: none), lower case
        without CAP_, as setpriv names them; ["all"] when it is not set."""
        if "CapabilityBoundingSet" not in self.settings:
            return ["all"]
        kept: set[str] = set()
        for value in self.values("CapabilityBoundingSet"):
            kept.update(word.removeprefix("CAP_").lower() for word in value.split())
        return sorted(kept)


def read_unit(path: Path = UNIT) -> Unit:
    """The [Service] section of the unit file at `path`."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section != "[Service]":
            continue
        key, _, value = line.partition("=")
        if value.strip():
            settings.setdefault(key.strip(), []).append(value.strip())
        else:
            settings[key.strip()] = []
    return Unit(settings)


class Sandbox:
    """The unit's sandbox over the server file system at `root` (a directory of the
    test's); `command` wraps a command line in it."""

    def __init__(self, root: Path, unit: Unit) -> None:
        self.root, self.unit = root, unit
        self.python = self.path("/opt/python")
        self.code = self.path("/opt/mustaple/src")
        self.deps = self.path("/opt/mustaple/deps")
        self.mustaple = self.path("/opt/mustaple/bin/mustaple")
        for directory in (self.python, self.code, self.deps, self.mustaple.parent):
            directory.mkdir(parents=True, exist_ok=True)
        interpreter = f"{self.python}/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
        self.mustaple.write_text(
            f"#!{interpreter}\nimport sys\nfrom mustaple.cli import run\nsys.exit(run())\n"
        )
        self.mustaple.chmod(0o755)
        self.interpreter = interpreter

    def path(self, unit_path: str) -> Path:
        """Where the server's `unit_path` is, outside the sandbox and in it."""
        return self.root / unit_path.lstrip("/")

    def environment(self) -> dict[str, str]:
        """What the sandboxed processes find in their environment: the installation's paths."""
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LD_LIBRARY_PATH": f"{self.python}/lib",
            "PYTHONPATH": f"{self.code}:{self.deps}",
            "LANG": "C.UTF-8",
        }

    def command(self, *argv: str | Path) -> list[str]:
        """`argv` run in the sandbox: unshare, the mounts, then setpriv and PR_SET_MDWE."""
        script = "\n".join(["set -eu", *self._mounts(), self._exec()])
        words = [str(word) for word in argv]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *words]

    def _mounts(self) -> list[str]:
        lines = self._installation()
        if self.unit.yes("PrivateTmp"):
            lines += self._private_tmp()
        if self.unit.one("ProtectSystem") == "strict":
            lines += self._read_only()
            lines += self._writable()
        if self.unit.one("ProtectHome") in ("yes", "true"):
            lines += [
                f"if [ -d {home} ]; then mount -t tmpfs -o ro,mode=000 inaccessible {home}; fi"
                for home in _HOMES
            ]
        lines += self._proc()
        return lines

    def _installation(self) -> list[str]:
        """The interpreter, mustaple's code and its dependencies, read-only under root/opt."""
        base = Path(sys.base_prefix).resolve()
        code = Path(mustaple.__file__).resolve().parent.parent
        deps = Path(sysconfig.get_path("purelib")).resolve()
        pairs = ((base, self.python), (code, self.code), (deps, self.deps))
        return [f"mount --bind -o ro {_q(source)} {_q(target)}" for source, target in pairs]

    def _private_tmp(self) -> list[str]:
        """A tmpfs on /tmp and /var/tmp; the root, when it is below /tmp, carried along to its
        own path in the new /tmp (with its mounts: the installation)."""
        root = self.root.resolve()
        if not root.is_relative_to("/tmp"):
            return [f"mount -t tmpfs -o mode=1777 private-tmp {d}" for d in ("/tmp", "/var/tmp")]
        staging = root.parent / f".{root.name}-private-tmp"
        inside = staging / root.relative_to("/tmp")
        return [
            f"mkdir -p {_q(staging)}",
            f"mount -t tmpfs -o mode=1777 private-tmp {_q(staging)}",
            f"mkdir -p {_q(inside)}",
            f"mount --rbind {_q(root)} {_q(inside)}",
            f"mount --move {_q(staging)} /tmp",
            "mount -t tmpfs -o mode=1777 private-tmp /var/tmp",
        ]

    def _read_only(self) -> list[str]:
        """Every mount read-only but the API file systems and the private /tmp."""
        keep = " | ".join([*(f"{api} | {api}/*" for api in _API), "/tmp", "/var/tmp"])
        return [
            "awk '{print $5}' /proc/self/mountinfo | while read -r point; do",
            f'  case "$point" in {keep}) continue ;; esac',
            '  if [ -e "$point" ]; then mount -o remount,bind,ro "$point"; fi',
            "done",
        ]

    def _writable(self) -> list[str]:
        """The unit's writable paths bound read-write again (a required one that is missing
        fails, as systemd fails the unit)."""
        lines = []
        for unit_path, required in self.unit.writable():
            target = _q(self.path(unit_path))
            bind = f"mount --bind {target} {target} && mount -o remount,bind,rw {target}"
            lines.append(bind if required else f"if [ -e {target} ]; then {bind}; fi")
        return lines

    def _proc(self) -> list[str]:
        options = []
        if (protect := self.unit.one("ProtectProc")) not in (None, "default"):
            options.append(f"hidepid={protect}")
        if (subset := self.unit.one("ProcSubset")) not in (None, "all"):
            options.append(f"subset={subset}")
        return [f"mount -t proc -o {','.join(options)} proc /proc"] if options else []

    def _exec(self) -> str:
        words = ["exec", "env", "-i", *(f"{k}={v}" for k, v in self.environment().items())]
        words += ["setpriv"]
        if self.unit.yes("NoNewPrivileges"):
            words.append("--no-new-privs")
        kept = self.unit.capabilities()
        if kept != ["all"]:
            bounding = ",".join(["-all", *(f"+{cap}" for cap in kept)])
            words += ["--bounding-set", bounding, "--inh-caps", "-all"]
        words.append("--")
        if self.unit.yes("MemoryDenyWriteExecute"):
            words += [self.interpreter, "-c", _q(_MDWE)]
        return " ".join(words) + ' "$@"'


def _q(value: object) -> str:
    return shlex.quote(str(value))

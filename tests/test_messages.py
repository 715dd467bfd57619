"""Messages a person reads: one line for a usage error, hints that name the exact option or
config key, `inspect` advice that fits a file, and `check` finding the issuer in --cafile."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import build_response
from mustaple.adapters.config import parse_config
from mustaple.check import Severity
from mustaple.cli import main
from mustaple.core.report import ExitCode
from mustaple.testing import CA, Leaf, StaplingServer


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["fetch"], "mustaple: Missing argument 'CERT'. (see mustaple fetch --help)"),
        (["fetch", "x", "--hash", "md5"], "mustaple: Invalid value for '--hash': 'md5' is not"),
        (["bogus"], "mustaple: No such command 'bogus'. (see mustaple --help)"),
        (["init", "--nope"], "mustaple: No such option '--nope'"),
        (["run", "--config"], "mustaple: Option '--config' requires an argument."),
    ],
)
def test_usage_errors_are_one_line(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(argv, capsys)
    assert code == ExitCode.USAGE
    assert out == ""
    assert err.startswith(line)
    assert err.count("\n") == 1


@dataclasses.dataclass
class Leafy:
    """A CA, one of its leaves, the leaf's fullchain.pem and a response file to fill."""

    ca: CA
    leaf: Leaf
    cert: Path
    response: Path
    now: datetime

    def respond(self, *, this_update: datetime, next_update: datetime | None) -> bytes:
        der = build_response(
            self.leaf, self.ca.issuing, this_update=this_update, next_update=next_update
        )
        self.response.write_bytes(der)
        return der


@pytest.fixture
def one(tmp_path: Path) -> Leafy:
    ca = CA(key_type="ec", ocsp_url="http://127.0.0.1:9/")
    leaf = ca.issue("msg.test")
    cert = leaf.write(tmp_path / "leaf").fullchain
    return Leafy(ca, leaf, cert, tmp_path / "response.der", datetime.now(UTC))


def test_missing_next_update_names_the_option_and_the_config_key(
    one: Leafy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one.respond(this_update=one.now, next_update=None)
    response, cert = one.response, one.cert
    code, out, _ = _run(["inspect", str(response), "--cert", str(cert)], capsys)
    assert code == ExitCode.NO_STAPLE
    hint = next(line for line in out.splitlines() if line.startswith("what to do:"))
    assert "--allow-missing-next-update" in hint
    assert "policy.allow_missing_next_update = true" in hint
    # both are real: the option makes inspect accept it, the key is one the loader knows
    lenient = ["inspect", str(response), "--cert", str(cert), "--allow-missing-next-update"]
    code, _, _ = _run(lenient, capsys)
    assert code == ExitCode.GOOD
    config = {"certificates": [{"paths": ["/x"]}], "policy": {"allow_missing_next_update": True}}
    assert parse_config(config, tmp_path / "m.toml").policy.verify.allow_missing_next_update


def test_inspect_of_a_file_never_says_retry(one: Leafy, capsys: pytest.CaptureFixture[str]) -> None:
    now, response, cert = one.now, one.response, one.cert
    good = one.respond(this_update=now, next_update=now + timedelta(days=4))
    response.write_bytes(good + b"\x00\x00")
    code, out, _ = _run(["inspect", str(response), "--cert", str(cert)], capsys)
    assert code == ExitCode.NO_STAPLE
    assert "[trailing-data]" in out
    assert "retrying" not in out
    assert "this response cannot be stapled; fetch a new one with `mustaple fetch" in out
    code, out, _ = _run(["inspect", str(response), "--cert", str(cert), "--json"], capsys)
    assert "retrying" not in json.loads(out)["hint"]
    one.respond(this_update=now + timedelta(hours=2), next_update=now + timedelta(days=4))
    code, out, _ = _run(["inspect", str(response), "--cert", str(cert)], capsys)
    assert "check this machine's clock (NTP), or judge it at another time with --at" in out
    assert "retrying" not in out


def test_check_finds_the_issuer_in_cafile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CA(key_type="ec", intermediate=False)  # a private CA: the root signs the leaf
    leaf = dataclasses.replace(ca.issue("private.test"), chain=())  # served without a chain
    roots = leaf.write(tmp_path).root
    now = datetime.now(UTC)
    staple = build_response(leaf, ca.issuing, this_update=now, next_update=now + timedelta(days=4))
    with StaplingServer(leaf, staple=staple) as server:
        address = f"127.0.0.1:{server.port}"
        code, out, _ = _run(["check", address, "--servername", "private.test"], capsys)
        assert code == Severity.UNKNOWN  # no issuer anywhere: nothing to validate with
        argv = ["check", address, "--servername", "private.test", "--cafile", str(roots)]
        code, out, _ = _run([*argv, "--json"], capsys)
    report = json.loads(out)
    assert (code, report["level"], report["issuer_source"]) == (Severity.OK, "OK", "cafile")

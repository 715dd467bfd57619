"""The two yardsticks `prime.py` sets mustaple against, in the same run on the same files.

* The floor (`floor_main`, run as its own process): a minimal serial loop doing only the work
  any primer must do per certificate: read and parse the PEM file, build the OCSP request, POST
  it over one keep-alive connection on loopback, parse the response and check its signature with
  the issuer's key, write it to a file, and check the issuer's signature on the leaf (the HTTP
  exchange is one send and the reads of the reply on a plain socket). Nothing
  else: no retries, no limits, no state, no store. Its CPU time plus the responder's, spread over
  the machine's cores, is the least wall time any primer can take here.
* The cron loop (`cron_loop`): what users write today, one `openssl ocsp -issuer CA -cert LEAF
  -url URL -respout FILE` per certificate, serially, each response verified against the CA.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from mustaple.core.request import encode_request, make_cert_id

__all__ = ["Measured", "cron_loop", "floor_main"]

SHA256 = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True)
class Measured:
    """One baseline's wall time and its own CPU time (processes it started included)."""

    size: int
    wall: float
    cpu: float
    good: int  # responses obtained, verified and written


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def floor_main(spec_json: str) -> int:
    """Run the floor over the files in the spec; print its figures as one JSON line."""
    spec = json.loads(spec_json)
    paths = [Path(p) for p in Path(spec["paths"]).read_text().splitlines()]
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    where = urlsplit(spec["url"])
    head = (
        f"POST {where.path or '/'} HTTP/1.1\r\nHost: {where.netloc}\r\n"
        "Content-Type: application/ocsp-request\r\nContent-Length: %d\r\n\r\n"
    ).encode()
    connection = socket.create_connection((where.hostname, where.port))
    cpu, start, good = _cpu(resource.RUSAGE_SELF), time.perf_counter(), 0
    for index, path in enumerate(paths):
        leaf, issuer = x509.load_pem_x509_certificates(path.read_bytes())[:2]
        request = encode_request(make_cert_id(issuer, leaf.serial_number))
        connection.sendall(head % len(request) + request)
        body = _read_reply(connection)
        response = ocsp.load_der_ocsp_response(body)
        key = issuer.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(response.signature, response.tbs_response_bytes, SHA256)
        if response.certificate_status is not ocsp.OCSPCertStatus.GOOD:
            continue
        (out / f"{index:06d}.der").write_bytes(body)
        leaf.verify_directly_issued_by(issuer)
        good += 1
    wall, cpu = time.perf_counter() - start, _cpu(resource.RUSAGE_SELF) - cpu
    print(json.dumps({"size": len(paths), "wall": wall, "cpu": cpu, "good": good}))
    return 0


def _read_reply(connection: socket.socket) -> bytes:
    """The body of one HTTP/1.1 reply with a Content-Length (all the bench responder sends)."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        data += connection.recv(65536)
    length = int(data[:end].lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(data) < end + 4 + length:
        data += connection.recv(65536)
    return data[end + 4 : end + 4 + length]


def cron_loop(paths: Sequence[Path], ca_pem: Path, url: str, out: Path) -> Measured:
    """`openssl ocsp` once per certificate, serially, as a cron job would; each response is
    verified against the CA and written with -respout."""
    out.mkdir(parents=True, exist_ok=True)
    cpu, start, good = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter(), 0
    for index, path in enumerate(paths):
        respout = out / f"{index:06d}.der"
        command = ["openssl", "ocsp", "-no_nonce", "-issuer", str(ca_pem), "-cert", str(path)]
        command += ["-url", url, "-CAfile", str(ca_pem), "-respout", str(respout)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        good += done.returncode == 0 and f"{path}: good" in done.stdout
    wall = time.perf_counter() - start
    return Measured(len(paths), wall, _cpu(resource.RUSAGE_CHILDREN) - cpu, good)


def environment_without_proxy() -> dict[str, str]:
    """This environment without proxy variables (everything here is on loopback)."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}

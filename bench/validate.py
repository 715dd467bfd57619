"""Benchmark: mustaple's validator against a bare `cryptography` parse and signature check.

For an RSA-2048 and a P-256 issuer, one valid OCSP response (signed by the issuer, SHA-1
CertID, responder id by key hash, no certificates) is validated over and over, two ways, in
the same process:

* bare: `ocsp.load_der_ocsp_response(data)`, then the issuer's public key verifies
  `resp.signature` over `resp.tbs_response_bytes` (PKCS#1 v1.5 + SHA-256, or ECDSA SHA-256);
* mustaple: `mustaple.verify.verify(data, target, now)`, which must give a `Staple`.

The two sides run in alternating batches (rounds), so that drift (frequency scaling, a noisy
neighbour) hits both alike; each side's figure is the median of its per-round rates, and the
ratio is mustaple's median over the bare median. The goal is a ratio of at least 0.9.

    .venv/bin/python bench/validate.py            # full run (about 40 s), updates the docs
    .venv/bin/python bench/validate.py --quick    # a few seconds, for a smoke test

The figures go to docs/performance.md, between the `<!-- bench:validate -->` markers only, so
other benchmarks can keep their own sections in the same file.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cryptography
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp

from mustaple.certs import Target, make_target
from mustaple.testing import CA, KeyType
from mustaple.verify import Staple, verify

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:validate -->", "<!-- /bench:validate -->"
GOAL = 0.9
INTRO = """# Performance

Figures measured by the scripts in `bench/` (see bench/README.md). Each section is written by
one script, between its own markers; run the script again to refresh it.

How to read these figures: they depend on the machine (CPU model and number of cores, given in
each section; the reference machine has 2 cores), on the command (given in each section, so
the run can be repeated) and on the date (versions of Python, OpenSSL and cryptography change
the picture). Compare figures from the same section and run only; the ratios travel better
between machines than the absolute rates.
"""


@dataclass(frozen=True)
class Subject:
    """One response to validate, and what each side needs for it."""

    label: str
    data: bytes
    target: Target
    now: datetime


@dataclass(frozen=True)
class Result:
    label: str
    bare: list[float]  # validations per second, one figure per round
    mustaple: list[float]

    @property
    def bare_median(self) -> float:
        return statistics.median(self.bare)

    @property
    def mustaple_median(self) -> float:
        return statistics.median(self.mustaple)

    @property
    def ratio(self) -> float:
        return self.mustaple_median / self.bare_median


# --- The responses -------------------------------------------------------------------------------


def make_subject(key_type: KeyType, label: str) -> Subject:
    start = datetime.now(UTC).replace(microsecond=0)
    ca = CA(key_type=key_type, ocsp_url="http://127.0.0.1:9/", now=start - timedelta(hours=1))
    leaf = ca.issue("bench.example.test")
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            leaf.cert,
            leaf.issuer,
            hashes.SHA1(),
            ocsp.OCSPCertStatus.GOOD,
            start - timedelta(minutes=30),
            start + timedelta(days=3),
            None,
            None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, leaf.issuer)
    )
    response = builder.sign(ca.issuing.key, hashes.SHA256())
    data = response.public_bytes(serialization.Encoding.DER)
    now = datetime.now(UTC) + timedelta(minutes=1)  # producedAt is the builder's clock
    return Subject(label, data, make_target(leaf.cert, leaf.issuer), now)


# --- The two sides -------------------------------------------------------------------------------


def bare_validator(subject: Subject) -> Callable[[], object]:
    """Parse with cryptography, then verify the signature with the issuer's key."""
    key = subject.target.issuer.public_key()
    data = subject.data
    if isinstance(key, rsa.RSAPublicKey):
        rsa_key, pkcs1 = key, padding.PKCS1v15()

        def run_rsa() -> object:
            resp = ocsp.load_der_ocsp_response(data)
            rsa_key.verify(resp.signature, resp.tbs_response_bytes, pkcs1, hashes.SHA256())
            return resp

        return run_rsa
    if isinstance(key, ec.EllipticCurvePublicKey):
        ec_key = key

        def run_ec() -> object:
            resp = ocsp.load_der_ocsp_response(data)
            ec_key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
            return resp

        return run_ec
    raise TypeError(f"no bare validator for {type(key).__name__}")


def mustaple_validator(subject: Subject) -> Callable[[], object]:
    data, target, now = subject.data, subject.target, subject.now

    def run() -> object:
        return verify(data, target, now)

    return run


def check_both(subject: Subject) -> None:
    """Both sides accept the response before anything is timed."""
    bare_validator(subject)()
    result = mustaple_validator(subject)()
    if not isinstance(result, Staple):
        raise SystemExit(f"{subject.label}: mustaple rejects the benchmark response: {result}")


# --- Timing --------------------------------------------------------------------------------------


def rate(func: Callable[[], object], iterations: int) -> float:
    """Calls per second over one batch (garbage collection off, as timeit does)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(iterations):
            func()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return iterations / elapsed


def calibrate(func: Callable[[], object], seconds: float) -> int:
    """How many calls take about `seconds`."""
    probe = 20
    while True:
        per_second = rate(func, probe)
        if probe / per_second >= 0.05:
            return max(10, round(per_second * seconds))
        probe *= 4


def measure(subject: Subject, rounds: int, seconds: float) -> Result:
    """Alternate the two sides, `rounds` times, each batch about `seconds` long."""
    sides = {"bare": bare_validator(subject), "mustaple": mustaple_validator(subject)}
    counts = {name: calibrate(func, seconds) for name, func in sides.items()}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for index in range(rounds):
        order = list(sides) if index % 2 == 0 else list(reversed(sides))
        for name in order:
            rates[name].append(rate(sides[name], counts[name]))
    return Result(subject.label, rates["bare"], rates["mustaple"])


# --- Reporting -----------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> list[str]:
    return [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores visible",
        f"OS: {platform.system()} {platform.release()} ({platform.machine()})",
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"cryptography {cryptography.__version__}, {backend.openssl_version_text()}",
    ]


def spread(rates: list[float]) -> str:
    return f"{min(rates):,.0f} to {max(rates):,.0f}"


def table(results: list[Result]) -> list[str]:
    lines = [
        "| issuer | bare cryptography (/s) | mustaple verify (/s) | ratio | goal (>= 0.9) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results:
        verdict = "met" if r.ratio >= GOAL else "**not met**"
        lines.append(
            f"| {r.label} | {r.bare_median:,.0f} | {r.mustaple_median:,.0f} "
            f"| {r.ratio:.2f} | {verdict} |"
        )
    return lines


def section(results: list[Result], command: str, rounds: int, seconds: float) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        "## Validation: mustaple against bare cryptography",
        "",
        f"Written by `bench/validate.py` on {when}. Command, from the repository root:",
        "",
        f"    {command}",
        "",
        *(f"- {fact}" for fact in machine_facts()),
        "",
        "Validations per second of one response (issuer-signed, SHA-1 CertID, responder id",
        "by key hash). *bare*: `ocsp.load_der_ocsp_response`, then the issuer's key verifies",
        "the signature over tbsResponseData. *mustaple*: `mustaple.verify.verify`, with every",
        f"check. Median of {rounds} alternating rounds of about {seconds:g} s per side; the",
        "ratio is mustaple's median over bare's.",
        "",
        *table(results),
        "",
        "Spread of the per-round rates (min to max):",
        "",
        *(f"- {r.label}: bare {spread(r.bare)}, mustaple {spread(r.mustaple)}" for r in results),
        END,
    ]
    return "\n".join(lines) + "\n"


def replace_section(text: str, new: str) -> str:
    """`text` with our marked section replaced (or appended); other sections untouched."""
    begins, ends = text.count(BEGIN), text.count(END)
    if (begins, ends) == (0, 0):
        return text.rstrip("\n") + "\n\n" + new
    if (begins, ends) != (1, 1) or text.index(BEGIN) > text.index(END):
        raise ValueError(f"the {BEGIN} markers are broken; fix them by hand")
    head = text[: text.index(BEGIN)]
    tail = text[text.index(END) + len(END) :].lstrip("\n")
    return head + new + ("\n" + tail if tail else "")


def write_doc(path: Path, new: str) -> None:
    text = path.read_text() if path.exists() else INTRO
    try:
        updated = replace_section(text, new)
    except ValueError as exc:
        raise SystemExit(f"{path}: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(updated)


def print_results(results: list[Result]) -> None:
    for r in results:
        print(
            f"{r.label:>10}: bare {r.bare_median:9,.0f}/s  mustaple {r.mustaple_median:9,.0f}/s"
            f"  ratio {r.ratio:.2f}  (bare {spread(r.bare)}; mustaple {spread(r.mustaple)})"
        )


# --- Main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 short rounds (a smoke test)")
    parser.add_argument("--rounds", type=int, help="rounds per issuer (default 7, quick 3)")
    parser.add_argument("--seconds", type=float, help="seconds per batch (default 1.2)")
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the figures")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--check", action="store_true", help=f"exit 1 below a {GOAL} ratio")
    return parser.parse_args(argv)


def command_line(argv: list[str]) -> str:
    return " ".join([".venv/bin/python", "bench/validate.py", *argv])


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    seconds = args.seconds or (0.15 if args.quick else 1.2)
    subjects = [make_subject("rsa", "RSA-2048"), make_subject("ec", "P-256")]
    for subject in subjects:
        check_both(subject)
    results = [measure(subject, rounds, seconds) for subject in subjects]
    print_results(results)
    if not args.no_write:
        write_doc(args.doc, section(results, command_line(argv), rounds, seconds))
        print(f"figures written to {args.doc}")
    below = [r.label for r in results if r.ratio < GOAL]
    if below:
        print(f"below the {GOAL} goal: {', '.join(below)}")
    return 1 if below and args.check else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""mustaple: keep OCSP staples, and must-staple certificates, safe on real TLS servers.

The packages show the shape (docs/architecture.md): `core`, the pure core (certificates,
requests, validation, schedule, life cycle; no I/O, the clock passed in); `adapters`, the thin
I/O around it (HTTP, stores, sinks, files, probes, configuration); `keeper`, the one
orchestrator (and the fleet and daemon around it); `serve`, the HTTP side; `front` and `cli`,
the front door; `testing`, the test kit. This module re-exports the core's main names.
"""

from mustaple.core.certs import Target, make_target, parse_certificates
from mustaple.core.errors import InputError, MustapleError
from mustaple.core.reasons import Note, Reason, Rejection
from mustaple.core.verify import Policy, Staple, compare, verify

__all__ = [
    "InputError",
    "MustapleError",
    "Note",
    "Policy",
    "Reason",
    "Rejection",
    "Staple",
    "Target",
    "compare",
    "make_target",
    "parse_certificates",
    "verify",
]

__version__ = "0.1.0"

"""mustaple: keep OCSP staples, and must-staple certificates, safe on real TLS servers.

The pure core: `certs` (parse, issuer, must-staple, URLs), `request` (CertID, GET/POST),
`verify` (response -> Staple or Rejection), with reason codes in `reasons`. I/O adapters:
`fetch` (HTTP). Front door: `cli`. Test kit: `mustaple.testing`.
"""

from mustaple.certs import Target, make_target, parse_certificates
from mustaple.errors import InputError, MustapleError
from mustaple.reasons import Note, Reason, Rejection
from mustaple.verify import Policy, Staple, compare, verify

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

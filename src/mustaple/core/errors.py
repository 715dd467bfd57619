"""The exceptions mustaple raises.

`MustapleError` is the one base. `InputError` means something we were given cannot be used
(an unreadable or garbled file, a missing or wrong issuer): the caller should show its message,
which is one line saying what is wrong and what to do, and exit with code 2. A responder that
misbehaves is never an exception: it is a `Rejection` with a reason code (see `reasons`).
Our own misuse of an API raises the usual TypeError or ValueError.
"""

from __future__ import annotations

__all__ = ["InputError", "MustapleError"]


class MustapleError(Exception):
    """Base of every exception mustaple raises on purpose."""


class InputError(MustapleError):
    """Input that cannot be used; the message says what is wrong and what to do."""

"""The leaf-signature checks already made, kept across restarts in the state database.

Loading a certificate checks the issuer's signature on the leaf (about 100 µs for P-256, the
largest single cost of a restart). `SignatureCache.signed_by` answers as
`mustaple.core.certs.signed_by` does, but a pair (issuer, leaf) whose signature this state
directory saw verify before is not checked again: the fact is stored as a tag, the
HMAC-SHA256 of the SHA-256 of the issuer's DER and the SHA-256 of the leaf's DER, under a key
of the state directory (`signatures.key`, 32 random bytes, mode 0600, made on first use).

A tag matches exactly the bytes that were checked: a different leaf or issuer, one changed
byte, is checked as before. A row the key did not make (garbled, copied from elsewhere, a
plain hash pair written by hand or by a tool that can write the database but not read the
key) matches no pair, so it never makes a wrong issuer accepted. A failed check is never
stored. Whoever can read the key can forge a tag, but could as well replace the files.

Tags of leaves past their notAfter are dropped when a cache is opened, and every tag when the
key is new. A key that cannot be read or made costs only the cache: one warning, and every
signature is checked.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mustaple.adapters.files import read_prefix, write_atomic
from mustaple.adapters.store import SqliteStore
from mustaple.core.certs import signed_by

__all__ = ["KEY_FILE", "SignatureCache"]

log = logging.getLogger("mustaple")
KEY_FILE = "signatures.key"
_KEY_SIZE = 32

Defer = Callable[[Callable[[], object]], None]
Tag = tuple[bytes, datetime]  # a tag and its leaf's notAfter


class SignatureCache:
    """`signed_by` remembering, in `store`, the pairs it saw verify (see the module)."""

    def __init__(self, store: SqliteStore, key: bytes, defer: Defer | None) -> None:
        """`defer` takes the store writes (the keeper groups them into transactions): one
        write at a time, storing every tag pending by then. Without it (a worker process,
        reading the store only), new tags wait for `new_tags`."""
        self._store, self.key, self._defer = store, key, defer
        self._pending: list[Tag] = []
        self._saving = False  # a write of the pending tags is deferred

    @classmethod
    def open(cls, store: object, defer: Defer, now: datetime) -> SignatureCache | None:
        """The cache of a SQLite `store`; None for another store or without a usable key."""
        if not isinstance(store, SqliteStore):
            return None
        found = _state_key(store.path.parent / KEY_FILE)
        if found is None:
            return None
        key, made = found
        expired_before = None if made else now  # a new key matches no tag
        defer(functools.partial(store.forget_signatures, expired_before))
        return cls(store, key, defer)

    def signed_by(self, leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
        """True when `issuer` signed `leaf`: this very pair verified before, or verifies now."""
        tag = self._tag(leaf, issuer)
        try:
            if self._store.has_signature(tag):
                return True
        except sqlite3.Error:
            pass  # as without a cache: checked
        if not signed_by(leaf, issuer):
            return False
        self.adopt([(tag, leaf.not_valid_after_utc)])
        return True

    def adopt(self, tags: list[Tag]) -> None:
        """Store `tags` (checked here, or by a worker process with the same key) soon."""
        self._pending += tags
        if self._defer is not None and self._pending and not self._saving:
            self._saving = True
            self._defer(self._save)

    def new_tags(self) -> list[Tag]:
        """The tags of the pairs checked since the last call (a worker's, for its keeper)."""
        tags, self._pending = self._pending, []
        return tags

    def _save(self) -> None:
        """Store the pending tags (kept when the store fails; lost if the transaction they
        joined is rolled back later, which costs only a check at the next start)."""
        self._store.add_signatures(self._pending)
        self._pending, self._saving = [], False

    def _tag(self, leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
        pair = _issuer_print(issuer) + leaf.fingerprint(hashes.SHA256())
        return hmac.digest(self.key, pair, hashlib.sha256)


@functools.lru_cache(maxsize=64)  # the same few issuers, for every leaf
def _issuer_print(issuer: x509.Certificate) -> bytes:
    return issuer.fingerprint(hashes.SHA256())


def _state_key(path: Path) -> tuple[bytes, bool] | None:
    """The state directory's key, and whether it was made now (none, or one of the wrong size,
    was there); None, after one warning, when it can be neither read nor made."""
    try:
        key = read_prefix(path, _KEY_SIZE + 1)
    except OSError as exc:
        log.warning(
            "%s: cannot read it (%s); leaf signatures are checked at every start until it is "
            "a readable file again or removed",
            path,
            exc.strerror,
        )
        return None
    if key is not None and len(key) == _KEY_SIZE:
        return key, False
    if key is not None:
        log.warning("%s: not a key of %d bytes: replaced by a new one", path, _KEY_SIZE)
    key = os.urandom(_KEY_SIZE)
    try:
        write_atomic(path, key, mode=0o600)
    except OSError as exc:
        log.warning(
            "%s: cannot write it (%s); leaf signatures are checked at every start",
            path,
            exc.strerror,
        )
        return None
    return key, True

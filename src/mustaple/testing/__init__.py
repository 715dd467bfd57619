"""mustaple.testing: a test PKI, a misbehaving OCSP responder and a stapling TLS server,
for tests and the demo.

Public and documented (docs/testing.md): use it to test your own deployment of mustaple.
"""

from mustaple.testing.craft import (
    ExtensionSpec,
    ResponseSpec,
    SignatureAlgorithm,
    SingleSpec,
    craft_response,
    good_single,
    good_spec,
    key_hash,
    unsuccessful,
)
from mustaple.testing.pki import CA, Identity, KeyType, Leaf, LeafFiles, new_key
from mustaple.testing.responder import Behaviour, OCSPResponder, ResponderThread, Served
from mustaple.testing.tls import StaplingServer

__all__ = [
    "CA",
    "Behaviour",
    "ExtensionSpec",
    "Identity",
    "KeyType",
    "Leaf",
    "LeafFiles",
    "OCSPResponder",
    "ResponderThread",
    "ResponseSpec",
    "Served",
    "SignatureAlgorithm",
    "SingleSpec",
    "StaplingServer",
    "craft_response",
    "good_single",
    "good_spec",
    "key_hash",
    "new_key",
    "unsuccessful",
]

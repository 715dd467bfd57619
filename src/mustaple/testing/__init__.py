"""mustaple.testing: a test PKI and a misbehaving OCSP responder, for tests and the demo.

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
    "craft_response",
    "good_single",
    "good_spec",
    "key_hash",
    "new_key",
    "unsuccessful",
]

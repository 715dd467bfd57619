"""mustaple.testing: a test PKI, a misbehaving OCSP responder, a stapling TLS server, a
keeper's whole world on a fake clock and a fetcher with no network, for tests and the demo.

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
from mustaple.testing.memory import Answer, MemoryFetcher
from mustaple.testing.pki import CA, Identity, KeyType, Leaf, LeafFiles, new_key
from mustaple.testing.responder import Behaviour, OCSPResponder, ResponderThread, Served
from mustaple.testing.tls import StaplingServer
from mustaple.testing.world import (
    QUICK_FETCH,
    ManualClock,
    RecordingSink,
    World,
    keeper_config,
    keeper_world,
)

__all__ = [
    "CA",
    "QUICK_FETCH",
    "Answer",
    "Behaviour",
    "ExtensionSpec",
    "Identity",
    "KeyType",
    "Leaf",
    "LeafFiles",
    "ManualClock",
    "MemoryFetcher",
    "OCSPResponder",
    "RecordingSink",
    "ResponderThread",
    "ResponseSpec",
    "Served",
    "SignatureAlgorithm",
    "SingleSpec",
    "StaplingServer",
    "World",
    "craft_response",
    "good_single",
    "good_spec",
    "keeper_config",
    "keeper_world",
    "key_hash",
    "new_key",
    "unsuccessful",
]

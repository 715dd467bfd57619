"""mustaple.testing: a test PKI and a misbehaving OCSP responder, for tests and the demo.

Public and documented (docs/testing.md): use it to test your own deployment of mustaple.
"""

from mustaple.testing.pki import CA, Identity, KeyType, Leaf, LeafFiles, new_key

__all__ = ["CA", "Identity", "KeyType", "Leaf", "LeafFiles", "new_key"]

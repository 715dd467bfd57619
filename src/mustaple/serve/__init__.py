"""The HTTP side: what a running keeper serves on its port.

The local OCSP responder (`localresponder`), the fast path that answers plain OCSP GETs before
aiohttp (`fastpath`), the Prometheus metrics (`metrics`) and the app with its pages and health
checks (`web`). The rule: it answers from the keeper's views, the frozen snapshots the keeper
gives; the keeper's work is not done here.
"""

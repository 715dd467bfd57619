"""The I/O adapters: each one thin piece of the outside world, behind a plain interface.

HTTP (`fetch`), the state store (`store`, `redisstore`), the sinks that deliver staples, files,
commands and hooks, TLS probes, the configuration file and server configurations. The rule: an
adapter does its I/O and hands values to the core to judge; it imports only the core and other
adapters (tests/test_imports.py), and never orchestrates (that is the keeper's job).
"""

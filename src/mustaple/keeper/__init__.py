"""The orchestration: the one place that wires the core to the adapters.

`keeper` runs each certificate's life cycle (events in, effects carried out in order, store
before deliver), `fleet` shares one fetch per certificate between processes over Redis, and
`daemon` builds both from the configuration and runs them (reload, graceful stop). The rule:
the keeper decides nothing itself; it asks the core and carries out the answer.
"""

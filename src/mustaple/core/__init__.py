"""The pure core: every decision mustaple makes, as functions of values.

Parsing certificates, building requests, judging responses, the retry and failover plan, the
schedule, a certificate's life cycle, the check's judge and how all of it is rendered. The rule:
no I/O. A module here imports nothing from the other packages at run time, loads no I/O library
(asyncio, aiohttp, redis, click, rich, prometheus-client; tests/test_imports.py checks it),
opens no file or socket and never reads the clock: `now` (or a `Clock`) is passed in.
"""

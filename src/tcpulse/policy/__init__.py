"""Pure policies, handed `now` by their caller: liveness (`liveness`: the server's `Tracker` of
every client's deadline, the client's own beat schedule, the phi accrual detector), reconnect
backoff (`backoff`) and rate limits (`ratelimit`).

May import `protocol` only; no clock, no I/O, no language (tests/test_architecture.py checks it).
"""

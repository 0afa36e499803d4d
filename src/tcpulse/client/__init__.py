"""The asyncio client: `Client` (`client`), where it keeps unacknowledged messages (`outbox`),
what it reports (`events`) and how it fails (`errors`).

May import `protocol`, `policy` and `security`; never `server`, `store`, `admin` or `cli`.
"""

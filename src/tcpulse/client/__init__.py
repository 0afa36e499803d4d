"""The asyncio client: `Client` (`client`), where it keeps unacknowledged messages (`outbox`),
what it reports (`events`, and `stream` for `Client.events()`) and how it fails (`errors`).

May import `protocol`, `policy`, `security` and `errors`; never `server`, `store`, `admin`, `cli` or `i18n`.
"""

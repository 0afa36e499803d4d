"""The asyncio server: `Server` (`server`), its settings (`config`), the per-connection protocol
object (`connection`, private to this package), the read-only view of a client that observers
receive (`view`), the registry of ids and sessions (`registry`), the gatekeeper for limits and
auth (`guard`) and the events it reports (`events`).

May import `protocol`, `policy`, `store` and `security`; never `client`, `admin` or `cli`.
"""

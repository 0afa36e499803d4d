"""Where the server keeps what it was sent: the `Store` interface and its records (`base`), the
in-memory store (`memory`) and the durable SQLite store (`sqlite`), the choice between them for a
`--db` spec (`factory.open_store`), with the read queries behind `tcpulse history` and
`tcpulse messages` (`queries`).

May import `protocol` and `errors` only.
"""

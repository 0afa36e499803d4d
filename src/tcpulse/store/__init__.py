"""Where the server keeps what it was sent: the `Store` interface and its records (`base`), the
in-memory store (`memory`) and the durable SQLite store (`sqlite`, its `schema`), with the checks
that keep its files private and unplanted (`files`) and what it deletes when (`retention`), the
choice between them for a `--db` spec (`factory.open_store`), and the read queries behind
`tcpulse history` and `tcpulse messages` (`queries`).

May import `protocol` and `errors` only.
"""

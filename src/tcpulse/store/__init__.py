"""Where the server keeps what it was sent: the `Store` interface and its records (`base`), the
in-memory store (`memory`) and the durable SQLite store (`sqlite`), with the read queries behind
`tcpulse history` and `tcpulse messages` (`queries`).

May import `protocol` and `errors` only.
"""

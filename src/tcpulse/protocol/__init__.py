"""The wire protocol, sans I/O (PROTOCOL.md): one frozen dataclass per verb (`events`), the
state machine of both sides with its table of moves (`states`), the parsing of control-line
arguments and JSON (`fields`), the `Connection` that turns bytes into events and events into bytes
(`connection`), and the protocol's errors (`errors`: local and remote).

Imports nothing of tcpulse outside this package, and no asyncio, socket, sqlite3, time or
gettext: no clock, no network, no language (tests/test_architecture.py checks it).
"""

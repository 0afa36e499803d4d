"""Write fuzz/seeds/: readable streams, each under a header that fuzz_connection.decode() reads.

    .venv/bin/python fuzz/make_seeds.py

A seed's name says what it holds and which role reads it.  Each is split into three reads (at
bytes 7 and 23); the fuzzer mutates the header's split points like the rest.  A `~` in a stream
stands for the header's number of digits (400 here: a number no float can hold).
"""

from __future__ import annotations

from pathlib import Path

from fuzz_connection import encode

HERE = Path(__file__).resolve().parent / "seeds"

INFO = (b'INFO {"proto":1,"server_id":"a1","version":"1.0.0","heartbeat_interval":5.0,"heartbeat_timeout":10.0,'
        b'"auth_required":false,"durable":true,"max_line":4096,"max_payload":1048576}\n')

BAD = b'MSG -1\nMSG 99999999999999999999999\nHELLO {"id":[[[[[[[[[[]]]]]]]]]]}\nPING \x00\n'

SEEDS: dict[str, tuple[dict[str, object], bytes]] = {
    "anon-server": ({"server": True}, b"HEARTBEAT\r\nPING abc\nMSG 0\n\nMSG 10\n0123456789\nBYE\n"),
    "anon-client": ({"server": False}, b"HEARTBEAT\r\nPING abc\nMSG 0\n\nMSG 10\n0123456789\nBYE\n"),
    "bad-server": ({"server": True}, BAD),
    "bad-client": ({"server": False}, BAD),
    "session-server": ({"server": True, "acked": 0},
                         b'HELLO {"id":"sensor-7","session":"k3x9","heartbeat_interval":5}\nMSG 5 1\nhello\n'
                         b"HEARTBEAT\nPING x\nMSG 3\r\nabc\r\nPONG y\nBYE done\n"),
    "session_refused-server": ({"server": True, "answer": "err"},
                         b'HELLO {"id":"sensor-7","session":"k3x9","heartbeat_interval":5}\nMSG 5 1\nhello\n'),
    "server_frames-client_hello": ({"server": False, "hello_first": True},
                      INFO + b'OK {"id":"fuzz","heartbeat_interval":5.0,"heartbeat_timeout":10.0,"acked":0}\n'
                      b"ACK 1\nMSG 2\nhi\nPING q\nERR 429 slow down\nERR 503 full\nBYE shutdown\n"),
    "server_frames-client": ({"server": False},
                      INFO + b"MSG 2\nhi\nPING q\nBYE shutdown\n"),
    # A long line behind INFO in the same read is judged by INFO's max_line (found by the fuzzer).
    "caps_after_info-client": ({"server": False, "digits": 200},
                               b'INFO {"max_line":128,"max_payload":16}\nPING ~\nMSG 17\n'),
    # Issue 15: numbers no float can hold, in every number field of INFO, HELLO and OK, and their
    # neighbours (negative, an exponent past a float, a float where an integer belongs, junk).
    "numbers_hello-server": ({"server": True, "digits": 400},
                        b'HELLO {"id":"a","session":"s","heartbeat_interval":~}\nMSG 1 1\nx\n'),
    "numbers_hello_309_digits-server": ({"server": True, "digits": 308},
                        b'HELLO {"id":"a","heartbeat_interval":1~}\nHEARTBEAT\n'),
    "numbers_hello_negative-server": ({"server": True, "digits": 400},
                        b'HELLO {"id":"a","heartbeat_interval":-~}\n'),
    "numbers_hello_exponent-server": ({"server": True},
                                      b'HELLO {"id":"a","heartbeat_interval":1e400}\n'),
    "strings_hello_surrogate-server": ({"server": True}, b'HELLO {"id":"a","token":"\\ud800"}\n'),
    "numbers_info_seconds-client": ({"server": False, "digits": 400},
                       b'INFO {"heartbeat_interval":~,"heartbeat_timeout":~}\nMSG 1\nx\n'),
    "numbers_info_ints-client": ({"server": False, "digits": 400},
                       b'INFO {"max_line":~,"max_payload":~,"proto":~}\nMSG 1\nx\n'),
    "numbers_info_types-client": ({"server": False},
                       b'INFO {"max_line":4096.0,"max_payload":9223372036854775808,"heartbeat_timeout":-0.0}\n'),
    "numbers_info_junk-client": ({"server": False},
                       b'INFO {"heartbeat_interval":[[{"a":1e999}]],"durable":1}\n'),
    "numbers_ok_seconds-client": ({"server": False, "hello_first": True, "digits": 400},
                     b'INFO {}\nOK {"id":"fuzz","heartbeat_interval":~,"heartbeat_timeout":2,"acked":0}\nACK 1\n'),
    "numbers_ok_acked-client": ({"server": False, "hello_first": True, "digits": 400},
                     b'INFO {}\nOK {"id":"fuzz","heartbeat_interval":1,"heartbeat_timeout":2,"acked":~}\nACK 1\n'),
    "numbers_ok_limits-client": ({"server": False, "hello_first": True},
                     b'INFO {}\nOK {"id":"fuzz","heartbeat_interval":5e-324,"heartbeat_timeout":1.7976931348623157e308,'
                     b'"acked":9223372036854775807}\nACK 9223372036854775807\n'),
}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for old in HERE.iterdir():
        old.unlink()
    for name, (cfg, stream) in sorted(SEEDS.items()):
        (HERE / name).write_bytes(encode(cfg, stream, splits=(7, 23)))
    print(f"wrote {len(SEEDS)} seeds to {HERE}")


if __name__ == "__main__":
    main()

"""The `tcpulse` command line: the group (`main`) and one module per sub-command, the console log
of `serve` (`console`), and what they share (`common`, `click_i18n`).  The only layer that
turns library errors into the user's language.

May import every other package; nothing imports it.
"""

"""The load generator behind `tcpulse bench` (`load`): many cheap raw clients in one process,
speaking through `protocol` (no parser of its own).

May import `protocol`, `policy`, `security` and `i18n`.
"""

"""TLS contexts and certificate identities (`tls`), per-client tokens and the auth file (`tokens`),
and the operating-system limits a process holding many sockets raises (`limits`).

May import `protocol` and `errors` only.
"""

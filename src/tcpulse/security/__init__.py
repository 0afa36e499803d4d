"""TLS contexts and certificate identities (`tls`), per-client tokens and the auth file (`tokens`).

May import `protocol` and `errors` only.
"""

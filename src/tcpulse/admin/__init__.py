"""The admin HTTP endpoint (needs the `admin` extra for `app`, `listener`, `feed` and `metrics`): JSON
API, Prometheus metrics and the live dashboard (`app`, `clients`, `feed`, `metrics`, `static/`), its
own listener with its connection cap, timeouts and TLS (`listener`, `tls`), and who may use it
(`auth`, which, like `tls`, needs no extra).

May import `server`, `store`, `security`, `policy`, `protocol`, `i18n`, `version` and `errors`;
never `cli`.
"""

"""The admin HTTP endpoint (needs the `admin` extra for `app`, `feed` and `metrics`): JSON API,
Prometheus metrics and the live dashboard (`app`, `feed`, `metrics`, `static/`), and who may
use it (`auth`, which needs no extra).

May import `server`, `security`, `policy`, `protocol` and `i18n`; never `cli`.
"""

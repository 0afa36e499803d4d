"""Several nodes as one: the cluster backend on Redis (`redis`: presence, leases, fenced
ownership of ids, sending across nodes) and its Lua scripts (`scripts`), and the workers of
`serve --workers N` on one port (`workers`).  Needs the `cluster` extra for `redis`.

The server knows a backend only through `server/cluster.py` (`ClusterBackend`, `ClusterHost`,
`ClusterView`): this package plugs into that seam.  May import `server`, `policy`, `protocol`,
`errors` and `version`; never `store`'s drivers, `admin` or `cli`.
"""

"""The store's files against other local users (issue 15, rows 6 and 7): private whatever the
umask, and nothing planted by someone else is opened, followed or mistaken for another server.

Real SQLite files.  A second local user is `nobody`: as root (these machines), files are given to
it with `os.chown` and processes run as it with `subprocess`'s `user=`; without root, those tests
are skipped and say why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpulse.i18n as i18n
from tcpulse.protocol.events import Msg
from tcpulse.store.base import StoreOpenError
from tcpulse.store.sqlite import SQLiteStore
from tests.conftest import tcpulse_cmd

IS_ROOT = os.geteuid() == 0
NOBODY = 65534
needs_root = pytest.mark.skipif(not IS_ROOT, reason="a second local user needs root here (os.chown, "
                                                    "processes run as nobody)")

SECRET = b"the-payload-nobody-may-read"
#: A Python that `nobody` may run (this one may live under a directory closed to other users).
NOBODY_PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)),
                     sys.executable)


def translated(template: str) -> bool:
    """The zh catalog has `template` (the command line shows the error in Chinese)."""
    assert i18n.set_language("zh") == "zh"
    try:
        return i18n._(template) != template
    finally:
        i18n.set_language("en")


def mode(p: Path | str) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users may enter (0755), unlike pytest's tmp_path (under a 0700 one): what
    keeps `nobody` out of a file there is the file's own mode."""
    d = Path(tempfile.mkdtemp(prefix="tcpulse-files-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


async def _store_one(path: Path, payload: bytes = SECRET, seq: int = 1) -> SQLiteStore:
    store = SQLiteStore(str(path))
    await store.open()
    store.add_messages("dev", "s", 1, 0.0, [Msg(payload=payload, seq=seq)])
    await store.flush()
    return store


async def _refused(path: Path | str, kind: str) -> StoreOpenError:
    store = SQLiteStore(str(path))
    with pytest.raises(StoreOpenError) as ei:
        await store.open()
    await store.close()
    e = ei.value
    assert e.kind == kind, (e.kind, str(e))
    assert str(e).isascii() and translated(e.template)  # English, with a zh translation
    return e


def _as_nobody(*cmd: str, stdin: int | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(cmd), user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True,
                          timeout=30, stdin=stdin)


# ------------------------------------------------------------------------------ row 6: private files


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o002])
async def test_every_file_is_created_0600_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    db = tmp_path / "t.db"
    with umask(mask):
        store = await _store_one(db)
        try:
            names = sorted(["t.db", "t.db-wal", "t.db-shm", "t.db.lock"])
            assert sorted(p.name for p in tmp_path.iterdir()) == names
            assert {n: oct(mode(tmp_path / n)) for n in names} == {n: "0o600" for n in names}
        finally:
            await store.close()
    assert oct(mode(db)) == "0o600"
    assert not (tmp_path / "t.db.lock").exists()  # the lock file lives only while the store is open


@needs_root
async def test_another_local_user_cannot_read_what_is_stored(shared_dir: Path) -> None:
    db = shared_dir / "t.db"
    control = shared_dir / "control"
    control.write_bytes(SECRET)
    control.chmod(0o644)
    # The control proves the test can see a leak: nobody reads a 0644 file in this directory.
    seen = _as_nobody("cat", str(control))
    assert seen.returncode == 0 and seen.stdout == SECRET
    with umask(0o022):
        store = await _store_one(db)
    try:
        for name in ("t.db", "t.db-wal", "t.db-shm"):
            got = _as_nobody("cat", str(shared_dir / name))
            assert got.returncode != 0 and b"Permission denied" in got.stderr, (name, got)
            assert SECRET not in got.stdout
        # Nor through SQLite (read-only, as `tcpulse messages` would).
        reader = ("import sqlite3, sys; c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True); "
                  "print(c.execute('SELECT payload FROM messages').fetchall())")
        got = _as_nobody(NOBODY_PYTHON, "-c", reader, str(db))
        assert got.returncode != 0 and b"unable to open" in got.stderr and SECRET not in got.stdout, got
    finally:
        await store.close()


# ------------------------------------------------------------------------------ row 7: planted files


@needs_root
async def test_a_database_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    # A real tcpulse database that says ("dev", "s") is stored up to 1000: opened, it would make
    # the server ACK 1000 a client's messages 1..1000 and store none of them.
    db = tmp_path / "t.db"
    planted = await _store_one(db, seq=1)
    await planted.close()
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("UPDATE sessions SET high = 1000")
        con.commit()
    for p in tmp_path.iterdir():
        os.chown(p, NOBODY, NOBODY)
    assert not (tmp_path / "t.db.lock").exists()  # closed: no lock left behind (it is checked on its own below)
    e = await _refused(db, "not-owner")
    assert e.params["owner"] == NOBODY and e.params["uid"] == 0 and str(db) in str(e)
    assert "belongs to another user (uid 65534)" in str(e)


@needs_root
def test_serve_refuses_a_planted_database_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "tcpulse.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE t(x)")
    os.chown(db, NOBODY, NOBODY)
    r = subprocess.run(tcpulse_cmd("serve", "--port", "0", "--status-every", "0"), capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (f"tcpulse: error: {db} belongs to another user (uid {NOBODY}), not to the user "
                                "this server runs as (uid 0): someone else may have put it there; remove it, or "
                                "choose another --db")
    r = subprocess.run(tcpulse_cmd("serve", "--lang", "zh", "--port", "0"), capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 1 and f"{db} 属于另一个用户 (uid {NOBODY})" in r.stderr, r.stderr


@needs_root
@pytest.mark.parametrize("sidecar", ["-wal", "-shm", "-journal"])
async def test_a_sidecar_planted_by_another_user_is_refused(tmp_path: Path, sidecar: str) -> None:
    # A -journal is rolled back into the database when SQLite opens it, a -wal read as its newest
    # pages: either could rewrite sessions.high.
    db = tmp_path / "t.db"
    store = await _store_one(db)
    await store.close()
    side = tmp_path / ("t.db" + sidecar)
    side.write_bytes(b"")
    os.chown(side, NOBODY, NOBODY)
    e = await _refused(db, "not-owner")
    assert e.params["path"] == str(side)


async def test_symbolic_links_are_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    # A lock that is a link: the server (root, in the report) would have created the file the
    # link names.  Dangling or not, it is refused and nothing is created or touched.
    (tmp_path / "t.db.lock").symlink_to(victim / "created-by-the-server")
    e = await _refused(tmp_path / "t.db", "symlink")
    assert e.params["path"] == str(tmp_path / "t.db.lock")
    assert list(victim.iterdir()) == [] and not (tmp_path / "t.db").exists()
    (tmp_path / "t.db.lock").unlink()
    existing = victim / "precious"
    existing.write_bytes(b"keep me")
    (tmp_path / "t.db.lock").symlink_to(existing)
    await _refused(tmp_path / "t.db", "symlink")
    assert existing.read_bytes() == b"keep me" and mode(existing) == 0o644
    (tmp_path / "t.db.lock").unlink()
    # The database itself, dangling or not, and each file SQLite keeps beside it.
    (tmp_path / "link.db").symlink_to(victim / "new.db")
    await _refused(tmp_path / "link.db", "symlink")
    assert not (victim / "new.db").exists()
    store = await _store_one(tmp_path / "real.db")
    await store.close()
    for side in ("-wal", "-shm", "-journal"):
        link = tmp_path / ("real.db" + side)
        link.symlink_to(victim / ("x" + side))
        await _refused(tmp_path / "real.db", "symlink")
        link.unlink()
    assert list(victim.iterdir()) == [existing]


async def test_two_names_of_one_file_cannot_both_be_served(tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    store = await _store_one(real)
    try:
        # A link to the database would have had a lock of its own (link.db.lock): two writers,
        # each with its own idea of every session's high.
        (tmp_path / "link.db").symlink_to(real)
        await _refused(tmp_path / "link.db", "symlink")
        # A hard link: another name, the same file.
        os.link(real, tmp_path / "hard.db")
        await _refused(tmp_path / "hard.db", "hard-linked")
        os.unlink(tmp_path / "hard.db")
        # The directory by another name, or through "..": the same real path, the same lock.
        (tmp_path / "alias").symlink_to(tmp_path)
        (tmp_path / "sub").mkdir()
        for other in (tmp_path / "alias" / "real.db", tmp_path / "sub" / ".." / "real.db"):
            e = await _refused(other, "in-use")
            assert e.params["path"] == str(other)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")) == ["real.db.lock"]
    finally:
        await store.close()
    # Once the first server is gone, the second name is a server's database again.
    again = await _store_one(tmp_path / "alias" / "real.db", seq=2)
    await again.close()
    assert again.warnings == []


@needs_root
async def test_a_lock_held_by_another_user_is_named_not_taken_for_a_server(shared_dir: Path) -> None:
    lock = shared_dir / "t.db.lock"
    lock.write_bytes(b"")
    os.chown(lock, NOBODY, NOBODY)
    holder = subprocess.Popen(
        [NOBODY_PYTHON, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.readline()", str(lock)],
        user=NOBODY, group=NOBODY, extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # Not "in use by another tcpulse server": the operator is told whose file it is.
        e = await _refused(shared_dir / "t.db", "not-owner")
        assert e.params["path"] == str(lock) and e.params["owner"] == NOBODY
        assert not (shared_dir / "t.db").exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(10)


@needs_root
async def test_a_lock_others_could_open_is_made_private(shared_dir: Path) -> None:
    # An older tcpulse made its lock 0644: anyone could open it and take the lock.
    lock = shared_dir / "t.db.lock"
    lock.write_bytes(b"")
    lock.chmod(0o644)
    store = await _store_one(shared_dir / "t.db")
    try:
        assert mode(lock) == 0o600
        got = _as_nobody(NOBODY_PYTHON, "-c", "import os, sys; os.open(sys.argv[1], os.O_RDONLY)", str(lock))
        assert got.returncode != 0 and b"Permission denied" in got.stderr
    finally:
        await store.close()


async def test_modes_others_could_write_are_refused_and_readable_ones_reported(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = await _store_one(db)
    await store.close()
    for bad in (0o620, 0o602, 0o666):
        db.chmod(bad)
        e = await _refused(db, "unsafe-mode")
        assert e.params["mode"] == f"{bad:04o}" and "chmod 600" in str(e)
    db.chmod(0o644)  # as an older tcpulse made it: readable, and said so
    store = SQLiteStore(str(db))
    await store.open()
    await store.close()
    assert [w.kind for w in store.warnings] == ["readable"]
    assert "can be read by other users (mode 0644)" in str(store.warnings[0])
    assert translated(store.warnings[0].template)
    (tmp_path / "t.db-wal").write_bytes(b"")
    (tmp_path / "t.db-wal").chmod(0o666)
    await _refused(db, "unsafe-mode")
    (tmp_path / "t.db-wal").unlink()
    (tmp_path / "t.db-shm").mkdir()
    await _refused(db, "not-a-file")


async def test_a_directory_others_can_write_is_reported(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o1777)  # like /tmp: the database opens, and the operator is told
    store = await _store_one(d / "t.db")
    await store.close()
    assert [w.kind for w in store.warnings] == ["dir-writable"]
    w = store.warnings[0]
    assert w.params["parent"] == str(d) and w.params["mode"] == "1777"
    assert str(w).isascii() and translated(w.template)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    store = await _store_one(private / "t.db")
    await store.close()
    assert store.warnings == []

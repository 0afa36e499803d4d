"""The files of an SQLite store, made private and checked before SQLite opens them.

The database holds every stored payload, and its `sessions.high` decides what `acked` says and
which `seq` counts as a duplicate.  Whoever can read it reads every message; whoever can write it,
or plant a file where the server will open one, can make the server acknowledge messages it
never stores (PROTOCOL.md, "Delivery").  So, before SQLite touches anything:

- What the store creates (the database, its `-wal` and `-shm`, the lock) is mode 0600 whatever
  the umask: the database and the lock here, and SQLite gives the `-wal` and `-shm` it creates the
  mode of the database file.
- What is there already (the database, `-wal`, `-shm`, `-journal`, the lock) must be a regular
  file with one name, owned by the user the server runs as, and not writable by other users.  A
  symbolic link is never followed (`O_NOFOLLOW`): a planted link would make the server (perhaps
  root) create or write a file wherever its owner chose.  Each refusal is a `StoreOpenError`.
- The lock is keyed by the real path of the database (`real_path()`): the directory's symbolic
  links and `..` resolved, a symbolic link or hard link to the database refused, so that two names
  of one file cannot both be served.
- A directory other users can write to is reported (`StoreWarning`), not refused: files can be
  planted or, without the sticky bit, replaced there between two starts.

Every call here is file work: the store makes them in its writer thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from tcpulse.errors import N_
from tcpulse.store.base import StoreOpenError, StoreWarning

__all__ = [
    "LOCK_SUFFIX",
    "SIDECARS",
    "check_database_files",
    "check_directory",
    "check_file",
    "check_no_links",
    "create_private",
    "make_lock_private",
    "open_lock",
    "prepare_database",
    "real_path",
]

#: What SQLite keeps next to a database: in WAL mode `-wal` and `-shm`; `-journal` in rollback
#: mode, and a planted one would be "rolled back" into the database when it is opened.
SIDECARS = ("-wal", "-shm", "-journal")
#: The lock file, next to the database: one server per database.
LOCK_SUFFIX = ".lock"
#: Permission bits of other users; a private file has none of them.
_OTHERS = 0o077
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def real_path(path: str) -> str:
    """`path` with its directory's symbolic links and `..` resolved (the last component is kept as
    it is: a link there is refused by `check_file`, never followed)."""
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(parent), name)


def check_directory(path: str) -> list[StoreWarning]:
    """Warnings about the directory `path` (a database's real path) is in: writable by other users,
    or owned by another user who is not root (who may then change its mode)."""
    parent = os.path.dirname(path)
    try:
        st = os.stat(parent)
    except OSError:
        return []
    me = os.geteuid()
    if st.st_mode & _WRITABLE_BY_OTHERS or st.st_uid not in (me, 0):
        return [StoreWarning("dir-writable", N_("directory {parent} can be written by other users (mode {mode}, "
                                                "owner uid {owner}): they could plant or replace files next to "
                                                "the database; keep --db in a directory only this user can write"),
                             parent=parent, mode=_mode(st), owner=st.st_uid)]
    return []


def check_file(path: str, st: os.stat_result | None = None) -> os.stat_result | None:
    """The `lstat()` of `path` (or `st`, when the caller has it), None if there is no such file.
    Raises `StoreOpenError` if the file is not one this server may trust: a symbolic link
    ("symlink"), not a regular file ("not-a-file"), owned by another user ("not-owner"), with
    more than one name ("hard-linked"), or writable by other users ("unsafe-mode")."""
    if st is None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
    if stat.S_ISLNK(st.st_mode):
        raise StoreOpenError("symlink", N_("{path} is a symbolic link, which tcpulse does not follow (it could point "
                                           "anywhere): give the real file's path as --db"), path=path)
    if not stat.S_ISREG(st.st_mode):
        raise StoreOpenError("not-a-file", N_("{path} is not a regular file: choose another --db"), path=path)
    me = os.geteuid()
    if st.st_uid != me:
        raise StoreOpenError("not-owner", N_("{path} belongs to another user (uid {owner}), not to the user this "
                                             "server runs as (uid {uid}): someone else may have put it there; "
                                             "remove it, or choose another --db"),
                             path=path, owner=st.st_uid, uid=me)
    if st.st_nlink > 1:
        raise StoreOpenError("hard-linked", N_("{path} has {links} names (hard links): a database must have one, so "
                                               "that no second server can serve it under another name; remove the "
                                               "other names, or choose another --db"),
                             path=path, links=st.st_nlink)
    if st.st_mode & _WRITABLE_BY_OTHERS:
        raise StoreOpenError("unsafe-mode", N_("{path} can be written by other users (mode {mode}): make it "
                                               "private (chmod 600 {path}), or choose another --db"),
                             path=path, mode=_mode(st))
    return st


def check_no_links(path: str) -> None:
    """For a reader (`tcpulse history`, `messages`), which may run as another user than the
    server: the database at `path` (its real path) and the files SQLite keeps beside it must not
    be symbolic links, nor anything but regular files, since SQLite may write the `-wal` and
    `-shm` even for a reader.  Raises `StoreOpenError`.  Ownership is not checked: reading the
    server's database as root or as its owner is what these commands are for."""
    for name in (path, *(path + s for s in SIDECARS)):
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise StoreOpenError("symlink", N_("{path} is a symbolic link, which tcpulse does not follow (it could "
                                               "point anywhere): give the real file's path as --db"), path=name)
        if not stat.S_ISREG(st.st_mode):
            raise StoreOpenError("not-a-file", N_("{path} is not a regular file: choose another --db"), path=name)


def create_private(path: str) -> bool:
    """Create `path` empty with mode 0600 (whatever the umask), never through a symbolic link.
    False if something is there already: the caller must `check_file()` it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return True


def check_database_files(path: str) -> None:
    """`check_file()` the database at `path` (its real path) and each file SQLite keeps beside it."""
    for name in (path, *(path + s for s in SIDECARS)):
        check_file(name)


def prepare_database(path: str) -> list[StoreWarning]:
    """Check the database at `path` (its real path) and the files SQLite keeps beside it, and
    create the database, empty and 0600, if it is missing (SQLite then gives its `-wal` and `-shm`
    the same mode).  Raises `StoreOpenError`; returns warnings (a database other users can read).

    The sidecars are not created here: SQLite deletes an empty `-wal` beside an empty database,
    and would take one beside a database in rollback mode for a log.  Between this check and
    SQLite's open, a user who can write the directory could still plant one: such a directory is
    reported by `check_directory()`."""
    check_database_files(path)
    if not create_private(path):
        check_file(path)  # planted since: checked again
    st = check_file(path)
    if st is not None and st.st_mode & _OTHERS:
        return [StoreWarning("readable", N_("{path} can be read by other users (mode {mode}): they can read "
                                            "every stored message; make it private (chmod 600 {path})"),
                             path=path, mode=_mode(st))]
    return []


def open_lock(path: str) -> int:
    """Open (or create, 0600) the lock file of the database at `path` (its real path), never
    through a symbolic link, and check it as `check_file` does (a lock planted by another user is
    refused with its owner named, not mistaken for another server).  Returns the descriptor; the
    caller takes the lock and closes it when done."""
    lock = path + LOCK_SUFFIX
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            check_file(lock)  # raises "symlink"
        # /proc, /sys, a read-only or missing place: the database cannot be made there, and the
        # user named the database, not its lock: say so.
        raise StoreOpenError("cannot-create", N_("cannot create the database {path}: {error} (choose another "
                                                 "--db, or --db none to keep nothing)"),
                             path=path, error=e.strerror or str(e)) from e
    try:
        check_file(lock, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_lock_private(fd: int) -> None:
    """Take every permission of other users off a lock this server holds: a lock others can open
    (a 0644 one from an older tcpulse) is a lock they can take, and keep the server from starting."""
    with contextlib.suppress(OSError):
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)

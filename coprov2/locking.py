"""One launch per output folder: the main process of a launch holds a lock on each folder while it writes it.

Two launches on one ``--output_dir`` would otherwise write the same shards at once, and the second one's
start-up would remove the first one's in-flight files as leftovers of a killed run. The lock is
``filelock``'s (``fcntl.flock`` on POSIX, also over NFS): the operating system releases it when its process
dies, so a lock left by a killed run is simply taken over by the next one. Beside it, ``<lock>.owner`` says
who holds it (pid, host, since), for the message a second launch prints: it waits (``wait=True``) or stops
with exit code 2 naming the holder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from coprov2.errors import UserError
from coprov2.stage_io import atomic_write_text

logger = logging.getLogger(__name__)


class FolderBusy(UserError):
    """Another launch is writing the folder."""


def lock_path(folder: Path) -> Path:
    """``.<name>.lock`` beside ``folder``: outside it, so a folder swapped in whole keeps its lock."""
    return folder.with_name(f".{folder.name}.lock")


def _owner(path: Path) -> str:
    try:
        owner = json.loads(path.read_text())
        return f"pid {owner['pid']} on {owner['host']} since {owner['since']}"
    except (OSError, ValueError, KeyError):
        return "a process that has not said who it is yet"


@contextmanager
def folder_lock(folder: Path, wait: bool = False, poll_s: float = 1.0) -> Iterator[None]:
    """Hold ``folder``'s lock for the ``with`` block; another launch's holds make this wait or raise."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder)
    owner_path = path.with_name(path.name + ".owner")
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _owner(owner_path)
        if not wait:
            raise FolderBusy(
                f"{folder}: another run is writing it ({holder}); let it finish, or add --wait_for_lock to "
                "queue behind it"
            ) from None
        logger.warning("%s: another run is writing it (%s); waiting for it (--wait_for_lock)", folder, holder)
        lock.acquire(poll_interval=poll_s)
    else:
        if owner_path.exists():
            logger.info("%s: taking over the lock of a run that ended without releasing it (%s)", folder,
                        _owner(owner_path))  # fmt: skip
    try:
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(
            owner_path, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})
        )
        yield
    finally:
        owner_path.unlink(missing_ok=True)
        lock.release()

"""PostgreSQL clusters of a test's own: initdb in a temporary directory, a free port.

The machine's PostgreSQL is shared by the whole suite and by other people; a disaster
recovery test kills its primary, so it brings its own. Run as root (CI), PostgreSQL's
tools run as the ``postgres`` OS user, as ``ops.dr`` does.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

from ops.dr import pg
from ops.dr.pg import DEFAULT_OS_USER, DrError
from tests.servers import free_port

OS_USER = DEFAULT_OS_USER


def scratch_dir(prefix: str) -> Path:
    """A directory under /tmp the cluster's OS user may use (pytest's own tmp_path is
    private to the test's user). Short: a Unix socket path has at most 107 bytes."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    pg.hand_over(root, OS_USER)
    return root


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the postmaster's backends and workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


class Cluster:
    """One cluster on ``pgdata``, listening on 127.0.0.1:``port`` with trust auth."""

    def __init__(self, pgdata: Path, port: int | None = None) -> None:
        self.pgdata = pgdata
        self.port = port or free_port()
        self.log = pgdata.parent / f"{pgdata.name}.log"

    @classmethod
    def create(cls, root: Path, name: str) -> Cluster:
        """initdb a new cluster under ``root`` (not started)."""
        cluster = cls(root / name)
        pg.run(
            [
                pg.pg_bin("initdb"),
                "-D",
                str(cluster.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            os_user=OS_USER,
            timeout=120,
        )
        return cluster

    def url(self, dbname: str = "postgres") -> str:
        return pg.dsn(self.port, dbname=dbname)

    def start(self) -> None:
        """Start it on its port, its socket in ``root``, and wait until it is ready."""
        pg.make_dir(self.log.parent, OS_USER, mode=0o755)
        pg.start(
            self.pgdata,
            os_user=OS_USER,
            log=self.log,
            port=self.port,
            socket_dir=self.pgdata.parent,
            timeout=60,
        )

    def kill_host(self) -> float:
        """Lose the primary as a host is lost: SIGKILL to the postmaster and, at once,
        to every process of it (no shutdown checkpoint, no last archive copy). Returns
        the wall-clock time of the kill."""
        pid = pg.postmaster_pid(self.pgdata)
        if pid is None:
            raise DrError(f"no server runs on {self.pgdata}")
        children = _children(pid)
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return killed_at

    def stop(self) -> None:
        """Stop it if it runs (immediate: a test's cluster keeps nothing)."""
        try:
            pg.stop(self.pgdata, os_user=OS_USER, mode="immediate", timeout=30)
        except DrError:
            pid = pg.postmaster_pid(self.pgdata)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)

    def output(self) -> str:
        return pg.tail(self.log, 40)

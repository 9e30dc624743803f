"""`make server`: the team's MLflow tracking server on PostgreSQL, with proxied artifacts.

Everything lives under one folder (``./team-server`` by default): ``pgdata/`` (the PostgreSQL
cluster, created once), ``artifacts/`` (served through the tracking server, so clients need no
shared file system), ``pgpass`` (the database password, readable by its owner only), logs and the
tracking server's pid. Both servers listen on 127.0.0.1 only. A second start reuses the database.

    python -m charrnn_experiments.team_server start [--dir team-server] [--port 5000]
    python -m charrnn_experiments.team_server stop  [--dir team-server]

PostgreSQL refuses to run as root: as root its binaries run as the ``postgres`` system user
(Debian's package creates it), which must be able to enter the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from charrnn_experiments.faults import exit_with_error

DB_USER = "mlflow"
DB_NAME = "mlflow"
INSTALL_HINT = (
    "install Debian's `postgresql` package (apt-get install postgresql) or put PostgreSQL's initdb and pg_ctl on PATH"
)
START_TIMEOUT_S = 180  # the first start migrates MLflow's schema into the new database


class ServerError(Exception):
    """A one-line reason why the team server cannot start or stop."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def postgres_bindir() -> Path:
    """The folder of PostgreSQL's server binaries: $CHARRNN_PG_BINDIR, else pg_config's, Debian's
    versioned one (the newest) or PATH's."""
    if os.environ.get("CHARRNN_PG_BINDIR"):  # a PostgreSQL outside the usual places
        candidates = [os.environ["CHARRNN_PG_BINDIR"]]
    else:
        candidates = debian_bindirs()
    for folder in candidates:
        if folder and all((Path(folder) / name).is_file() for name in ("initdb", "pg_ctl")):
            return Path(folder)
    raise ServerError(f"PostgreSQL's server binaries (initdb, pg_ctl) were not found: {INSTALL_HINT}")


def debian_bindirs() -> list[str]:
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    return candidates


def health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class TeamServer:
    """PostgreSQL plus `mlflow server` under one folder."""

    def __init__(
        self, folder: str | os.PathLike[str], port: int = 5000, workers: int = 4, host: str = "127.0.0.1"
    ) -> None:
        self.folder = Path(folder).resolve()
        self.port = port
        self.host = host  # the tracking server's; PostgreSQL listens on 127.0.0.1 only
        self.workers = workers
        self.pgdata = self.folder / "pgdata"
        self.artifacts = self.folder / "artifacts"
        self.pgpass = self.folder / "pgpass"
        self.state = self.folder / "server.json"  # PostgreSQL's port, written once by init
        self.pid_file = self.folder / "mlflow.pid"
        self.mlflow_log = self.folder / "mlflow.log"
        self.postgres_log = self.folder / "postgres.log"

    # --- PostgreSQL ---------------------------------------------------------------------

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    def _owner_cmd(self, cmd: list[str]) -> list[str]:
        """Run a PostgreSQL server binary as the cluster's owner: `postgres` when we are root."""
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else cmd

    def _give_to_postgres(self, path: Path) -> None:
        if self.as_root:
            user = pwd.getpwnam("postgres")
            os.chown(path, user.pw_uid, user.pw_gid)

    def _pg(self, name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            self._owner_cmd([str(postgres_bindir() / name), *args]),
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pg_port(self) -> int:
        return json.loads(self.state.read_text())["postgres_port"]

    @property
    def backend_uri(self) -> str:
        """The driver is named because SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3. No password
        here: libpq reads it from ``pgpass`` (PGPASSFILE), never from a command line."""
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.pg_port}/{DB_NAME}"

    def password(self) -> str:
        return self.pgpass.read_text().strip().rsplit(":", 1)[1]

    def _check_can_run_postgres(self) -> None:
        postgres_bindir()
        if not self.as_root:
            return
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServerError(
                "PostgreSQL refuses to run as root and there is no `postgres` system user: "
                f"{INSTALL_HINT}, or run as an ordinary user"
            ) from None
        probe = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(self.folder)], capture_output=True, check=False
        )
        if probe.returncode != 0:
            raise ServerError(
                f"the `postgres` user cannot enter {self.folder} (a parent folder is "
                "private): start from a folder it can enter, or as an ordinary user"
            )

    def init_cluster(self) -> None:
        """Create the database cluster once; a failed attempt leaves nothing behind."""
        if self.state.exists():
            return
        shutil.rmtree(self.pgdata, ignore_errors=True)
        self.pgdata.mkdir(mode=0o700)
        self._give_to_postgres(self.pgdata)
        password = secrets.token_urlsafe(24)
        pwfile = self.folder / "initdb.pw"  # read once by initdb, then deleted
        try:
            pwfile.touch(mode=0o600)
            pwfile.write_text(password + "\n")
            self._give_to_postgres(pwfile)
            out = self._pg(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                DB_USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            )
            if out.returncode != 0:
                raise ServerError(f"initdb failed: {last_line(out.stderr or out.stdout)}")
            port = free_port()
            with open(self.pgdata / "postgresql.conf", "a") as conf:
                # loopback TCP only: no Unix socket folder to own, the same for root and users
                conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n")
        except BaseException:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise
        finally:
            pwfile.unlink(missing_ok=True)
        self.pgpass.touch(mode=0o600)
        self.pgpass.write_text(f"127.0.0.1:{port}:*:{DB_USER}:{password}\n")
        self.state.write_text(json.dumps({"postgres_port": port}))

    def postgres_running(self) -> bool:
        return self.pgdata.is_dir() and self._pg("pg_ctl", "status", "-D", str(self.pgdata)).returncode == 0

    def start_postgres(self) -> None:
        if self.postgres_running():
            return
        self.postgres_log.touch()
        self._give_to_postgres(self.postgres_log)
        out = self._pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.pgdata), "-l", str(self.postgres_log))
        if out.returncode != 0:
            log_tail = last_line(self.postgres_log.read_text()) or last_line(out.stderr or out.stdout)
            raise ServerError(
                f"PostgreSQL did not start on 127.0.0.1:{self.pg_port}: {log_tail} (see {self.postgres_log})"
            )
        self._create_database()

    def _create_database(self) -> None:
        try:
            import psycopg2
        except ImportError:
            raise ServerError("the PostgreSQL driver is missing: make extra NAME=server") from None
        try:
            conn = psycopg2.connect(
                host="127.0.0.1", port=self.pg_port, user=DB_USER, password=self.password(), dbname="postgres"
            )
            try:
                conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
                with conn.cursor() as cur:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
                    if cur.fetchone() is None:
                        cur.execute(f"CREATE DATABASE {DB_NAME}")
            finally:
                conn.close()
        except psycopg2.Error as err:
            raise ServerError(
                f"cannot use PostgreSQL on 127.0.0.1:{self.pg_port}: {last_line(str(err))} (see {self.postgres_log})"
            ) from None

    def stop_postgres(self) -> bool:
        if not self.postgres_running():
            return False
        out = self._pg("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.pgdata))
        if out.returncode != 0:
            raise ServerError(f"pg_ctl stop failed: {last_line(out.stderr or out.stdout)}")
        return True

    # --- the tracking server --------------------------------------------------------------

    def running_mlflow(self) -> tuple[int, str] | None:
        """(pid, url) of this folder's `mlflow server` when it is alive."""
        try:
            record = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes()
            os.kill(record["pid"], 0)
        except (OSError, ProcessLookupError):
            return None
        if b"mlflow" not in cmdline:  # the pid was reused by something else
            return None
        return record["pid"], record["url"]

    def start_mlflow(self) -> str:
        url = f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '::') else self.host}:{self.port}"
        if port_in_use(self.port):
            raise ServerError(f"port {self.port} on 127.0.0.1 is in use: choose another, e.g. PORT={self.port + 1}")
        self.artifacts.mkdir(exist_ok=True)
        # MLflow 3's job runner (GenAI judges, trace roll-ups; nothing charrnn uses) starts eight more processes
        # and ~0.5 GB: off unless the environment asks for it
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, "PGPASSFILE": str(self.pgpass)}
        with open(self.mlflow_log, "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                    "--backend-store-uri",
                    self.backend_uri,
                    "--artifacts-destination",
                    str(self.artifacts),
                ],
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # its own group: stop ends all its workers
        self.pid_file.write_text(json.dumps({"pid": proc.pid, "url": url}))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not health(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop_mlflow()
                raise ServerError(
                    f"mlflow server did not start: {last_line(self.mlflow_log.read_text())} (see {self.mlflow_log})"
                )
            time.sleep(0.5)
        return url

    def stop_mlflow(self) -> bool:
        running = self.running_mlflow()
        self.pid_file.unlink(missing_ok=True)
        if running is None:
            return False
        pid = running[0]
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):  # uvicorn may wait on idle clients
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return True
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    return True
                reap(pid)
                time.sleep(0.2)
        return True

    # --- both -----------------------------------------------------------------------------

    def start(self) -> tuple[str, bool]:
        """Start both servers; returns (url, whether it was already running)."""
        created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        running = self.running_mlflow()
        if running is not None and health(running[1]):
            self.start_postgres()  # stopped behind the tracking server's back: bring it back
            return running[1], True
        started_postgres = False
        try:
            self._check_can_run_postgres()
            self.init_cluster()
            started_postgres = not self.postgres_running()
            self.start_postgres()
            return self.start_mlflow(), False
        except BaseException:
            # a failed start leaves nothing it started running, and no folder it made
            if started_postgres:
                with contextlib.suppress(ServerError):
                    self.stop_postgres()
            if created:
                shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def stop(self) -> bool:
        """Stop both; returns whether anything was running."""
        stopped_mlflow = self.stop_mlflow()
        stopped_postgres = self.pgdata.is_dir() and self.stop_postgres()
        return stopped_mlflow or stopped_postgres


def reap(pid: int) -> None:
    """Collect the exit status of a server this process started itself (else it stays a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def last_line(text: str) -> str:
    """The last line of a log that says what went wrong (PostgreSQL adds hints after it)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "FATAL" in line]
    return (errors or lines or [""])[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m charrnn_experiments.team_server", description="The team's MLflow tracking server on PostgreSQL."
    )
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--dir", default="team-server", help="folder of the database, artifacts and logs")
    parser.add_argument("--port", type=int, default=5000, help="the tracking server's port")
    parser.add_argument(
        "--host", default="127.0.0.1", help="the tracking server's address (it has no authentication: keep it private)"
    )
    parser.add_argument("--workers", type=int, default=4, help="the tracking server's worker processes")
    args = parser.parse_args(argv)
    server = TeamServer(args.dir, args.port, args.workers, args.host)
    try:
        if args.command == "start":
            url, already = server.start()
            state = "already running" if already else "running"
            print(
                f"MLflow tracking server {state} at {url} (PostgreSQL on 127.0.0.1:{server.pg_port}, "
                f"artifacts in {server.artifacts})\n"
                f"track into it: charrnn-train tracking.uri={url}",
                flush=True,
            )
        else:
            print("stopped" if server.stop() else "not running", flush=True)
    except ServerError as err:
        exit_with_error(str(err))


if __name__ == "__main__":
    main()

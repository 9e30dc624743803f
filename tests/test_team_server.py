"""The team server for real: PostgreSQL from its binaries, `mlflow server` in front of it with proxied
artifacts, sweeps from several processes and from a 2-node Ray cluster tracked into it, and its faults.

Every test here shares one server (started once per session) and runs on one xdist worker (pytest's
`--dist loadfile` sends a file's tests to one worker), in the order written.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from charrnn_experiments.lease import owner_of
from charrnn_experiments.team_server import ServerError, TeamServer, free_port, health, postgres_bindir
from conftest import (
    BIN,
    emitted_metric_counts,
    jobs_log_one_dataset_at_once,
    own_stderr,
    run_cli,
    tiny,
    write_small_text,
)

ITERS, LOG_EVERY, EVAL_EVERY = 60, 10, 30  # tiny()'s budget and cadence
GRID = ["model.hidden_size=8,16", "train.seq_length=8,16"]


def missing_postgres() -> str | None:
    try:
        postgres_bindir()
    except ServerError as err:
        return str(err)
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        return "running as root needs the `postgres` system user that Debian's postgresql package creates"
    return None


def postgres_folder(prefix: str, also_missing: str | None = None) -> Path:
    """A fresh folder for a team server, or a skip naming what this machine lacks. Not under pytest's private tmp
    folder: as root, PostgreSQL runs as `postgres`, which must enter it."""
    reason = missing_postgres() or also_missing
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="session")
def team_server():
    folder = postgres_folder("charrnn-team-")
    server = TeamServer(folder, free_port(), workers=2)
    try:
        for attempt in range(5):  # a free port can be taken between picking and binding it: pick another
            try:
                server.start()
                break
            except ServerError:
                if attempt == 4:
                    raise
                server = TeamServer(folder, free_port(), workers=2)  # a failed start stopped what it started
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def url(team_server) -> str:
    return f"http://127.0.0.1:{team_server.port}"


def sql(server: TeamServer, query: str, *args) -> list[tuple]:
    """Rows straight from PostgreSQL, not through MLflow."""
    import psycopg2

    conn = psycopg2.connect(
        host="127.0.0.1", port=server.pg_port, user="mlflow", password=server.password(), dbname="mlflow"
    )
    try:
        with conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall()
    finally:
        conn.close()


def experiment_runs(url: str, name: str):
    client = MlflowClient(url)  # over REST
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name!r} on the server"
    return client, experiment.experiment_id, client.search_runs([experiment.experiment_id], max_results=1000)


def metric_counts_over_rest(client: MlflowClient, run) -> dict[str, int]:
    return {key: len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}


def metric_counts_in_postgres(server: TeamServer, experiment_id: str) -> dict[str, dict[str, int]]:
    """run id -> metric key -> points, counted by PostgreSQL itself."""
    counts: dict[str, dict[str, int]] = {}
    for run, key, n in sql(
        server,
        "SELECT m.run_uuid, m.key, count(*) FROM metrics m JOIN runs r "
        "ON r.run_uuid = m.run_uuid WHERE r.experiment_id = %s GROUP BY m.run_uuid, m.key",
        int(experiment_id),
    ):
        counts.setdefault(run, {})[key] = n
    return counts


def check_sweep(server: TeamServer, url: str, experiment: str, n_jobs: int, text: Path, folder: Path) -> list:
    """One parent, n_jobs FINISHED children with every metric point their trainers emitted (each key, each
    point), over REST and in PostgreSQL."""
    client, experiment_id, runs = experiment_runs(url, experiment)
    parents = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parents[0].info.run_id]
    assert len(children) == len(runs) - 1 == n_jobs
    assert [c.info.status for c in children] == ["FINISHED"] * n_jobs, [
        (c.info.status, c.data.tags.get("charrnn.reason")) for c in children
    ]
    assert parents[0].info.status == "FINISHED"
    emitted, expected = {}, {}
    for c in children:  # the same job run here, untracked: what its trainer logs
        grid = tuple(f"{key}={c.data.params[key]}" for key in ("model.hidden_size", "train.seq_length"))
        if grid not in emitted:
            emitted[grid] = emitted_metric_counts(folder / str(len(emitted)), *tiny(text), *grid)
        expected[c.info.run_id] = emitted[grid]
        assert emitted[grid]["train/loss"] == ITERS // LOG_EVERY, emitted[grid]  # the cadence it was given
        assert metric_counts_over_rest(client, c) == emitted[grid], c.info.run_name
    # the database itself holds them
    rows = sql(server, "SELECT run_uuid, status FROM runs WHERE experiment_id = %s", int(experiment_id))
    assert sorted(rows) == sorted((r.info.run_id, r.info.status) for r in runs)
    in_postgres = metric_counts_in_postgres(server, experiment_id)
    for c in children:
        assert in_postgres[c.info.run_id] == expected[c.info.run_id], c.info.run_name
    return children


TEAM_SERVER = [sys.executable, "-m", "charrnn_experiments.team_server"]


def team_server_command(*args: str, prefix: Sequence[str] = (), timeout: float = 60, env=None):
    """``python -m charrnn_experiments.team_server <args>`` (after ``prefix``: who runs it), its output captured."""
    return subprocess.run([*prefix, *TEAM_SERVER, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_second_start_reports_the_running_server(team_server, url):
    out = team_server_command("start", "--dir", str(team_server.folder), "--port", str(team_server.port))
    assert out.returncode == 0, out.stderr
    assert f"already running at {url}" in out.stdout


def test_missing_postgres_binaries_is_one_line(tmp_path):
    out = team_server_command(
        "start",
        "--dir",
        str(tmp_path / "team"),
        "--port",
        str(free_port()),
        env={**os.environ, "CHARRNN_PG_BINDIR": str(tmp_path)},
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ")
    assert "install Debian's `postgresql` package" in out.stderr
    assert not (tmp_path / "team").exists()  # a failed start leaves no empty folder behind


def test_a_failed_start_stops_the_postgresql_it_started_and_leaves_no_folder():
    folder = postgres_folder("charrnn-fail-")
    team = folder / "team"
    try:
        with socket.socket() as taken:
            # bound but not listening: the port looks free, then mlflow server cannot bind it (a lost race)
            taken.bind(("127.0.0.1", 0))
            out = team_server_command("start", "--dir", str(team), "--port", str(taken.getsockname()[1]), timeout=300)
        assert out.returncode == 2 and out.stderr.startswith("error: mlflow server did not start"), out.stderr
        assert out.stderr.count("\n") == 1
        left = [cmd for cmd in (entry[2] for entry in process_table().values()) if str(team) in cmd]
        assert not left, left
        assert not team.exists()
    finally:
        if team.exists():
            TeamServer(team).stop()
        shutil.rmtree(folder, ignore_errors=True)


MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def test_make_server_and_server_stop(tmp_path):
    """The Makefile's own targets, run from another folder as a user would from the repo: everything lands in
    ./team-server there. BIN points at this environment and the install stamps are emptied (no pip run)."""
    folder = postgres_folder("charrnn-make-", None if shutil.which("make") else "make is not installed")
    make = ["make", "--no-print-directory", "-f", str(MAKEFILE), f"BIN={BIN}", "SERVER=", "CORE="]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        out = subprocess.run([*make, "server", f"PORT={port}"], cwd=folder, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"running at {url}" in out.stdout
        assert (folder / "team-server" / "pgdata").is_dir() and (folder / "team-server" / "artifacts").is_dir()
        assert MlflowClient(url).search_experiments()[0].name == "Default"  # PostgreSQL behind it answers
        out = subprocess.run([*make, "server-stop"], cwd=folder, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "stopped", out.stderr[-2000:]
        assert not health(url)
        server = TeamServer(folder / "team-server", port)
        assert server.running_mlflow() is None and not server.postgres_running()
    finally:
        TeamServer(folder / "team-server", port).stop()
        shutil.rmtree(folder, ignore_errors=True)


def ordinary_user_prefix() -> list[str] | None:
    """How to run a command as an ordinary user: as is when we are one, else in a user namespace where we are
    uid 1000 (PostgreSQL then runs as us, not through runuser); None where neither works."""
    if os.geteuid() != 0:
        return []
    prefix = ["unshare", "-U", "--map-user=1000", "--map-group=1000"]
    if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
        return prefix
    return None


def process_ended(pid: int, wait_s: float = 10) -> bool:
    """Whether process ``pid`` is gone or a zombie (whose parent has not collected it yet) within wait_s."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.2)
    return False


def test_an_ordinary_user_starts_and_stops_the_team_server():
    prefix = ordinary_user_prefix()
    folder = postgres_folder(
        "charrnn-user-",
        None if prefix is not None else "root without user namespaces (unshare -U): no ordinary user to run as",
    )
    where = ["--dir", str(folder / "team")]
    port = free_port()
    try:
        assert subprocess.run([*prefix, "id", "-u"], capture_output=True, text=True).stdout.strip() != "0"
        out = team_server_command("start", *where, "--port", str(port), "--workers", "1", prefix=prefix, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert MlflowClient(f"http://127.0.0.1:{port}").search_experiments()[0].name == "Default"
        # PostgreSQL runs as the user who started it (outside the namespace: us), not as `postgres`
        postmaster = int((folder / "team" / "pgdata" / "postmaster.pid").read_text().split()[0])
        assert Path(f"/proc/{postmaster}").stat().st_uid == os.getuid()
        out = team_server_command("stop", *where, prefix=prefix, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "stopped", out.stderr[-2000:]
        assert process_ended(postmaster) and not health(f"http://127.0.0.1:{port}")
    finally:
        team_server_command("stop", *where, prefix=prefix, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def parallel_grid(tmp_path_factory, team_server, url):
    """A 2x2 sweep with charrnn's launcher into the server, run once for the tests that read it: (output, folder)."""
    where = tmp_path_factory.mktemp("parallel-grid")
    out = run_cli(
        "charrnn-train",
        "-m",
        "hydra/launcher=charrnn",
        "hydra.launcher.n_jobs=4",
        *tiny(write_small_text(where)),
        *GRID,
        f"tracking.uri={url}",
        "tracking.experiment=parallel-grid",
        cwd=where,
    )
    return out, where


def test_2x2_parallel_sweep_lands_in_postgres(parallel_grid, team_server, url):
    out, where = parallel_grid
    assert out.returncode == 0 and "error:" not in out.stderr, out.stderr[-3000:]
    children = check_sweep(team_server, url, "parallel-grid", 4, where / "small.txt", where / "emitted")
    grid = {(c.data.params["model.hidden_size"], c.data.params["train.seq_length"]) for c in children}
    assert grid == {("8", "8"), ("8", "16"), ("16", "8"), ("16", "16")}
    # artifacts went through the server into its folder: no store, no artifacts where the sweep ran
    assert not (where / "mlflow.db").exists() and not (where / "mlartifacts").exists()
    stored = team_server.artifacts / children[0].info.experiment_id
    assert len(list(stored.glob("*/artifacts/checkpoints/latest.npz"))) == 4


def test_sample_analyze_compare_and_resume_work_against_the_team_server(cli, parallel_grid, tmp_path, url):
    """The commands that read a store work on the sweep above through the server, unchanged."""
    assert parallel_grid[0].returncode == 0, parallel_grid[0].stderr[-3000:]
    client, _, runs = experiment_runs(url, "parallel-grid")
    parent = next(r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags)
    child = next(r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags)
    where = f"tracking.uri={url}"
    out = cli("charrnn-sample", f"run={child.info.run_id}", where, "length=40", "seed=3")
    assert out.returncode == 0 and "error:" not in out.stderr, out.stderr[-2000:]
    out = cli("charrnn-analyze", f"run={child.info.run_id}", where, "record.length=200", f"out={tmp_path / 'a'}")
    assert out.returncode == 0 and "error:" not in out.stderr, out.stderr[-2000:]
    assert (tmp_path / "a" / "recording.npz").exists()
    out = cli("charrnn-compare", f"parent={parent.info.run_id}", where, f"out={tmp_path / 'c'}")
    assert out.returncode == 0 and "error:" not in out.stderr, out.stderr[-2000:]
    assert all(c.info.run_name in out.stdout for c in runs if c is not parent)
    out = cli("charrnn-train", f"train.resume={child.info.run_id}", f"train.max_iters={ITERS + 30}", where)
    assert out.returncode == 0 and "error:" not in out.stderr, out.stderr[-2000:]
    resumed = client.get_run(child.info.run_id)
    assert resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
    assert steps == list(range(LOG_EVERY, ITERS + 30 + 1, LOG_EVERY)), steps


def test_a_long_job_name_still_makes_a_run(cli, small_text, tmp_path, url):
    long_path = tmp_path / ("d" * 120) / "text.txt"
    long_path.parent.mkdir()
    shutil.copy(small_text, long_path)
    out = cli(
        "charrnn-train",
        "-m",
        *tiny(long_path),
        "model.hidden_size=8",
        f"tracking.uri={url}",
        "tracking.experiment=long-name",
    )
    assert out.returncode == 0 and "error:" not in out.stderr, out.stderr[-2000:]
    _, _, runs = experiment_runs(url, "long-name")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]


def test_eight_trainings_started_at_once_all_succeed(small_text, tmp_path, team_server, url):
    procs = [
        subprocess.Popen(
            [
                str(BIN / "charrnn-train"),
                *tiny(small_text),
                f"tracking.uri={url}",
                "tracking.experiment=eight",
                f"hydra.run.dir={tmp_path / str(i)}",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for i in range(8)
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert [rc for rc, _, _ in results] == [0] * 8, [err[-2000:] for rc, _, err in results if rc]
    run_ids = {re.search(r"run id:\s+(\w+)", out).group(1) for _, out, _ in results}
    client, experiment_id, runs = experiment_runs(url, "eight")
    assert {r.info.run_id for r in runs} == run_ids and len(run_ids) == 8
    emitted = emitted_metric_counts(tmp_path / "emitted", *tiny(small_text))
    in_postgres = metric_counts_in_postgres(team_server, experiment_id)
    for r in runs:
        assert r.info.status == "FINISHED"
        assert metric_counts_over_rest(client, r) == emitted == in_postgres[r.info.run_id], r.info.run_id


def test_parallel_jobs_log_the_same_dataset_into_postgres(team_server, tmp_path):
    # PostgreSQL words the unique-key refusal differently from SQLite; every job must still link it.
    from charrnn_experiments.store import Store

    uri = f"postgresql+psycopg2://mlflow:{team_server.password()}@127.0.0.1:{team_server.pg_port}/mlflow"
    for trial in range(3):
        experiment_id = Store(uri, None).ensure_experiment(f"race-{trial}")
        run_ids = jobs_log_one_dataset_at_once(uri, experiment_id, tmp_path / str(trial))
        client = MlflowClient(uri)
        for run_id in run_ids:
            assert [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs] == ["file"]


def check_nothing_made(out, tmp_path, words: str) -> None:
    assert out.returncode != 0
    stderr = own_stderr(out)
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and words in stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    assert not (tmp_path / "outputs").exists(), "the store is checked before Hydra makes the run's folder"


def seconds_to_run(*args: str, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    out = run_cli("charrnn-train", *args, cwd=cwd, timeout=400)
    return time.monotonic() - started, out


def test_team_server_without_its_database_is_one_line_and_leaves_nothing(small_text, tmp_path, team_server, url):
    from charrnn_experiments.store import PROBE_SECONDS

    # the unit: the same job on the healthy server, just before, under the same load
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    healthy_seconds, out = seconds_to_run(
        *tiny(small_text), f"tracking.uri={url}", "tracking.experiment=healthy", cwd=healthy
    )
    assert out.returncode == 0, out.stderr[-2000:]
    team_server.stop_postgres()
    try:
        # the server holds each request ~100 s retrying its database, and MLflow's client retries that
        seconds, out = seconds_to_run(
            *tiny(small_text), f"tracking.uri={url}", "tracking.experiment=no-db", cwd=tmp_path
        )
    finally:
        team_server.start_postgres()
    check_nothing_made(out, tmp_path, url)
    assert "its database does not" in out.stderr, out.stderr[-2000:]
    # one probe without retries: at most its own time limit on top of what a healthy run takes
    assert seconds < 2 * healthy_seconds + PROBE_SECONDS, (seconds, healthy_seconds)
    assert MlflowClient(url).get_experiment_by_name("no-db") is None


def test_postgres_unreachable_at_start_is_one_line_and_leaves_nothing(small_text, tmp_path):
    # the unit: the same job on a local store, just before, under the same load; SQLAlchemy's and MLflow's
    # connection retries would take minutes
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    healthy_seconds, out = seconds_to_run(*tiny(small_text), cwd=healthy)
    assert out.returncode == 0, out.stderr[-2000:]
    work = tmp_path / "work"
    work.mkdir()
    dead = free_port()  # nothing listens there
    nowhere = f"tracking.uri=postgresql+psycopg2://mlflow@127.0.0.1:{dead}/mlflow"
    seconds, out = seconds_to_run(*tiny(small_text), nowhere, cwd=work)
    check_nothing_made(out, work, str(dead))
    assert seconds < 2 * healthy_seconds, (seconds, healthy_seconds)
    # a sweep too: one line before any job starts (Hydra made its callback's error a warning and went on)
    seconds, out = seconds_to_run("-m", *tiny(small_text), "model.hidden_size=8,16", nowhere, cwd=work)
    check_nothing_made(out, work, str(dead))
    assert not (work / "multirun").exists()
    assert seconds < 2 * healthy_seconds, (seconds, healthy_seconds)


def test_server_restart_mid_run_loses_no_metric_point(small_text, tmp_path, team_server, url):
    where = ["--dir", str(team_server.folder)]
    iters, log_every = 20_000, 100
    job = tiny(
        small_text,
        f"train.max_iters={iters}",
        f"train.log_every={log_every}",
        "train.eval_every=5000",
        "train.sample_every=0",
    )
    proc = subprocess.Popen(
        [str(BIN / "charrnn-train"), *job, f"tracking.uri={url}", "tracking.experiment=restart"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:  # training is under way, its run open on the server
        if "| train/loss" in line:
            break
    # both servers go down and come back through the same commands a user types
    assert team_server_command("stop", *where, timeout=120).returncode == 0
    started = team_server_command("start", *where, "--port", str(team_server.port), "--workers", "2", timeout=300)
    assert started.returncode == 0, started.stderr
    rest = proc.stdout.read()
    assert proc.wait(timeout=600) == 0, rest[-3000:]
    run_id = re.search(r"run id:\s+(\w+)", rest).group(1)
    client = MlflowClient(url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(log_every, iters + 1, log_every))
    # every key's every point, against what the same job's trainer emits, over REST and in PostgreSQL
    emitted = emitted_metric_counts(tmp_path / "emitted", *job)
    assert metric_counts_over_rest(client, run) == emitted
    assert metric_counts_in_postgres(team_server, run.info.experiment_id)[run_id] == emitted


# --- a real 2-node Ray cluster -------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(entry.name)] = (int(fields[1]), int(fields[2]), cmdline)
        except (OSError, ValueError, IndexError):
            continue
    return table


def cluster_processes(roots: set[int]) -> dict[int, str]:
    """pid -> command line of the `ray start` processes, their groups and all their descendants
    (Ray's task workers start sessions of their own)."""
    table = process_table()
    found = {pid for pid, (_, pgid, _) in table.items() if pgid in roots}
    while True:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found
        if not more:
            return {pid: table[pid][2] for pid in found}
        found |= more


@dataclass
class RayCluster:
    address: str
    home: Path  # HOME of every Ray process here: a user's ~/.ray (auth tokens) must not leak in
    roots: set[int]  # pids of the two `ray start --block` processes, each leading its process group

    def env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.home)}


@pytest.fixture(scope="module")
def ray_cluster(team_server):
    """`ray start --head` and a second `ray start --address=...`: two nodes of one CPU each.

    Both run with --block in process groups of their own, so teardown stops exactly this cluster
    (`ray stop` would stop every Ray on the machine)."""
    if not (BIN / "ray").exists():
        pytest.skip("the ray CLI is not installed (make test installs it)")
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths are limited
    cluster = RayCluster(f"127.0.0.1:{free_port()}", temp, set())

    def node(*args: str, log: str) -> subprocess.Popen:
        # this Python runs `ray start`, so the nodes' workers import this environment's packages
        proc = subprocess.Popen(
            [
                sys.executable,
                str(BIN / "ray"),
                "start",
                "--block",
                "--num-cpus=1",
                "--node-ip-address=127.0.0.1",
                "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}",
                *args,
            ],
            stdout=open(temp / log, "w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=cluster.env(),
        )
        cluster.roots.add(proc.pid)
        return proc

    def head() -> subprocess.Popen:
        cluster.address = f"127.0.0.1:{free_port()}"
        return node(
            "--head",
            f"--port={cluster.address.rsplit(':', 1)[1]}",
            f"--temp-dir={temp}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            log="head.log",
        )

    try:
        nodes = [start_node(cluster, head, [])]
        start_node(cluster, lambda: node(f"--address={cluster.address}", log="worker.log"), nodes)
        yield cluster
    finally:
        stop_cluster(cluster.roots)
        shutil.rmtree(temp, ignore_errors=True)


def start_node(
    cluster: RayCluster, start: Callable[[], subprocess.Popen], running: list[subprocess.Popen], tries: int = 3
) -> subprocess.Popen:
    """Start a node (``start`` picks its free ports) and wait until it joined; a node that exits at once, as
    when a port it picked was taken meanwhile, is started again on other ports."""
    for attempt in range(tries):
        proc = start()
        try:
            wait_for_nodes(cluster, len(running) + 1, [*running, proc])
            running.append(proc)
            return proc
        except AssertionError:
            if proc.poll() is None or attempt == tries - 1:
                raise
            stop_cluster({proc.pid})  # whatever it had started
            cluster.roots.discard(proc.pid)
    raise AssertionError("unreachable")


def wait_for_nodes(cluster: RayCluster, n: int, nodes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 180
    while True:
        status = subprocess.run(
            [sys.executable, str(BIN / "ray"), "status", f"--address={cluster.address}"],
            capture_output=True,
            text=True,
            timeout=120,
            env=cluster.env(),
        )
        if len(re.findall(r"^\s*1 node_", status.stdout, re.M)) == n:
            return
        assert all(p.poll() is None for p in nodes), "a ray node exited"
        assert time.monotonic() < deadline, f"ray cluster did not reach {n} nodes:\n{status.stderr[-2000:]}"
        time.sleep(1)


def stop_cluster(roots: set[int]) -> None:
    doomed = cluster_processes(roots)  # now, while the workers' ancestry still leads to the nodes
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        for pid in roots:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            for pid in roots:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            alive = {
                pid for pid in doomed if Path(f"/proc/{pid}").exists() and process_table().get(pid, (0, 0, ""))[2]
            }  # zombies have an empty command line
            if not alive:
                return
            time.sleep(0.3)
    raise AssertionError(f"ray processes left behind: {alive}")


RAY = [
    "hydra/launcher=ray",
    # the launcher's default for a local Ray, which ray.init refuses when it joins a cluster
    "+hydra.launcher.ray.init.object_store_memory=null",
]


def test_sweep_on_a_two_node_ray_cluster_lands_in_postgres(small_text, tmp_path, team_server, url, ray_cluster):
    out = subprocess.run(
        [
            str(BIN / "charrnn-train"),
            "-m",
            *RAY,
            f"+hydra.launcher.ray.init.address={ray_cluster.address}",
            *tiny(small_text),
            *GRID,
            f"tracking.uri={url}",
            "tracking.experiment=ray-grid",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        env=ray_cluster.env(),
    )
    assert out.returncode == 0 and "error:" not in out.stderr, out.stderr[-3000:]
    children = check_sweep(team_server, url, "ray-grid", 4, small_text, tmp_path / "emitted")
    assert sorted(int(c.data.tags["charrnn.job"]) for c in children) == [0, 1, 2, 3]


def test_a_job_killed_on_a_ray_worker_ends_its_run_and_the_sweep_goes_on(small_text, tmp_path, url, ray_cluster):
    sweep = subprocess.Popen(
        [
            str(BIN / "charrnn-train"),
            "-m",
            *RAY,
            f"+hydra.launcher.ray.init.address={ray_cluster.address}",
            *tiny(small_text),
            "train.max_iters=null",
            "train.max_seconds=6",
            *GRID,
            f"tracking.uri={url}",
            "tracking.experiment=ray-kill",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        env=ray_cluster.env(),
    )
    client = MlflowClient(url)
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:  # a job's run is open and its Ray worker is training
        assert sweep.poll() is None and time.monotonic() < deadline, "no job got under way"
        experiment = client.get_experiment_by_name("ray-kill")
        open_runs = experiment and client.search_runs(
            [experiment.experiment_id], f"attributes.status = 'RUNNING' and tags.`{MLFLOW_PARENT_RUN_ID}` != ''"
        )
        jobs = [pid for pid, cmd in cluster_processes(ray_cluster.roots).items() if cmd.startswith("ray::_run_job")]
        # the Ray worker that writes an open run (its owner tag)
        owners = {owner.pid for r in open_runs or [] if (owner := owner_of(r)) is not None}
        if owners & set(jobs):
            victim = min(owners & set(jobs))
        time.sleep(0.2)
    time.sleep(1)
    os.kill(victim, signal.SIGKILL)
    output = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 0, output[-3000:]
    _, _, runs = experiment_runs(url, "ray-kill")
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]
    status = [(r.data.tags.get("charrnn.job"), r.info.status) for r in children]
    # the sweep went on: every job has a finished run
    assert {j for j, s in status if s == "FINISHED"} == {"0", "1", "2", "3"}, status
    # and the killed job's run ended
    assert "RUNNING" not in {s for _, s in status}, status
    assert {s for _, s in status} & {"KILLED", "FAILED"}, status

"""Wall time of a 4-job grid sweep, serial vs `hydra/launcher=charrnn` (goal: at most 0.55x serial on 2 cores).

Runs `charrnn-train experiment=grid` cut to 2 hidden sizes x 2 sequence lengths at a fixed number of
iterations, once with Hydra's basic (serial) launcher and once with `hydra/launcher=charrnn`, each into a
fresh store, alternating over --repeats rounds so that a shared machine's drift hits both alike. For every
job it prints the share of its run's wall time spent in training steps (from the run's
`throughput/chars_per_s`): what is not in steps is the per-job fixed cost (process start, config, store
round-trips, evaluation, samples, checkpoints, the end-of-run recording). Each sweep's wall time is split into
its phases: start-up (command start to the first job's run start: imports, config, the store, the parent
run), jobs (first job's start to the last job's end: the only part a parallel launcher can shorten) and
the end (leaderboard, exit); the jobs phase gets its own charrnn / serial ratio. Each sweep line also gives
the machine's load average as it started: other work on the cores makes parallel jobs lose their second
core, so a figure taken under load reads so.
Run: .venv/bin/python benchmarks/bench_sweep.py [--iters 1000] [--jobs 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from logged_throughput import training_steps
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

BIN = Path(sys.executable).parent
GRID = ["experiment=grid", "model.hidden_size=32,64", "train.seq_length=16,32", "optim.lr=0.1", "optim.clip=5"]


@dataclass
class Sweep:
    wall: float  # seconds, command start to exit
    startup: float  # command start to the first job's run start
    jobs_span: float  # first job's run start to the last job's run end
    jobs: list[tuple[str, float, float]]  # (job name, run seconds, seconds in training steps)


def run_sweep(launcher: list[str], iters: int) -> Sweep:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        t0 = time.perf_counter()
        out = subprocess.run(
            [str(BIN / "charrnn-train"), *GRID, *launcher, f"train.max_iters={iters}"],
            cwd=tmp,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"error: the sweep failed ({' '.join(launcher) or 'serial'}):\n{out.stderr[-2000:]}")
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        runs = client.search_runs(
            [client.get_experiment_by_name("grid").experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` != ''"
        )
        jobs = []
        for run in runs:
            _, steps = training_steps(client, run)
            jobs.append((run.info.run_name, (run.info.end_time - run.info.start_time) / 1000, steps))
        first = min(run.info.start_time for run in runs) / 1000
        last = max(run.info.end_time for run in runs) / 1000
        return Sweep(wall, first - started, last - first, sorted(jobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1000, help="training iterations per job")
    parser.add_argument("--jobs", type=int, default=2, help="hydra.launcher.n_jobs")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    launchers = {"serial": [], "charrnn": ["hydra/launcher=charrnn", f"hydra.launcher.n_jobs={args.jobs}"]}
    sweeps: dict[str, list[Sweep]] = {name: [] for name in launchers}
    print(
        f"4-job grid, {args.iters} iterations per job, {os.cpu_count()} cores, "
        f"hydra/launcher=charrnn n_jobs={args.jobs}"
    )
    for round_ in range(args.repeats):
        for name, launcher in launchers.items():
            load = os.getloadavg()[0]
            sweep = run_sweep(launcher, args.iters)
            sweeps[name].append(sweep)
            print(
                f"round {round_ + 1} {name:>6}: {sweep.wall:6.1f} s = start-up {sweep.startup:4.1f} s + jobs "
                f"{sweep.jobs_span:5.1f} s + end {sweep.wall - sweep.startup - sweep.jobs_span:4.1f} s  "
                f"(1-min load average {load:.1f} as it started, the previous sweep included)"
            )
            for job, seconds, steps in sweep.jobs:
                print(
                    f"    {job:<12} run {seconds:5.1f} s, training steps {steps:5.1f} s "
                    f"({steps / seconds:4.0%} of the run)"
                )
        serial, parallel = sweeps["serial"][-1], sweeps["charrnn"][-1]
        print(
            f"round {round_ + 1} charrnn / serial: {parallel.wall / serial.wall:.2f} "
            f"(jobs phase alone {parallel.jobs_span / serial.jobs_span:.2f})"
        )

    def median(name: str, phase: str) -> float:
        return statistics.median(getattr(sweep, phase) for sweep in sweeps[name])

    serial, parallel = median("serial", "wall"), median("charrnn", "wall")
    print(
        f"median over {args.repeats} round(s): serial {serial:.1f} s (start-up {median('serial', 'startup'):.1f} s), "
        f"charrnn {parallel:.1f} s (start-up {median('charrnn', 'startup'):.1f} s)"
    )
    print(
        f"charrnn / serial wall time: {parallel / serial:.2f} (goal <= 0.55 with 2 jobs on 2 cores); "
        f"jobs phase alone: {median('charrnn', 'jobs_span') / median('serial', 'jobs_span'):.2f}"
    )


if __name__ == "__main__":
    main()

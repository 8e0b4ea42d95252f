"""``rlplatform bench``: benchmarks that print numbers (one JSON line last)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from rlplatform.bench.judge import JudgeBenchConfig
from rlplatform.cli.common import ConfigOpt, StoreName, configure_logging
from rlplatform.infra import processes
from rlplatform.release.judge import JudgePolicy
from rlplatform_client.games import DEFAULT_GAME

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print numbers (one JSON line last).")


@bench_app.command("learn")
def bench_learn(
    game: Annotated[str, typer.Option("--game", help="CartPole-v1 (DQN, target 475) or Pendulum-v1 (SAC, -250).")],
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per side, run alternating.")] = 3,
    max_minutes: Annotated[float, typer.Option("--max-minutes", min=0.1, help="Time budget per run.")] = 15.0,
    clients: Annotated[int, typer.Option("--clients", min=1, max=64, help="Pipeline clients.")] = 4,
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Default: runs/bench-learn-<timestamp>.")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "INFO",
) -> None:
    """Seconds and env steps to the target: RLlib alone (tuned example, pipeline hyperparameters) vs the pipeline."""
    import time

    from rlplatform.bench.learn import (
        BenchLearnError,
        LearnBenchConfig,
        check_options,
        run_learn_bench,
    )

    configure_logging(log_level)
    try:
        check_options(game, seeds)
    except BenchLearnError as exc:
        raise typer.BadParameter(str(exc).split(": ", 1)[1], param_hint=str(exc).split(":")[0]) from None
    processes.interrupt_on_sigterm()
    work = (work_dir or Path("runs") / time.strftime("bench-learn-%Y%m%d-%H%M%S")).resolve()
    cfg = LearnBenchConfig(game=game, seeds=seeds, max_minutes=max_minutes, work_dir=work, clients=clients)
    print(json.dumps(run_learn_bench(cfg)), flush=True)


@bench_app.command("updates")
def bench_updates(
    game: Annotated[str, typer.Option("--game", help="A game with a simulator to play.")] = DEFAULT_GAME,
    updates: Annotated[int, typer.Option("--updates", help="Measured updates per side per round.")] = 300,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds, alternating the sides.")] = 3,
    steps: Annotated[int, typer.Option("--steps", help="Transitions of random play both sides sample from.")] = 20_000,
    store: Annotated[
        StoreName, typer.Option("--store", help="The store side: sqlite (a new file) or cassandra (RLP_CASSANDRA_*).")
    ] = StoreName.sqlite,
    learners: Annotated[
        int, typer.Option("--learners", min=0, max=64, help="Learner actors on a local Ray; 0: in this process.")
    ] = 0,
    config: ConfigOpt = None,
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Default: runs/bench-updates-<time>.")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "WARNING",
) -> None:
    """Learner updates/s fed from the experience store vs from RLlib's in-memory replay buffer."""
    import time

    from rlplatform.bench.updates import (
        BenchUpdatesError,
        UpdatesBenchConfig,
        check_config,
        check_options,
        run_updates_bench,
    )
    from rlplatform.train.algorithms import AlgorithmConfigError
    from rlplatform.train.trainer import read_config_file

    configure_logging(log_level)
    try:
        spec = check_options(game, updates, rounds, steps)
        try:
            doc = read_config_file(config) if config else {}
        except AlgorithmConfigError as exc:
            raise BenchUpdatesError(f"--config: {exc}") from None
        check_config(spec, doc.get("algorithm"), doc.get("hyperparameters", {}))
    except BenchUpdatesError as exc:
        option, _, reason = str(exc).partition(": ")
        raise typer.BadParameter(reason, param_hint=option) from None
    work = work_dir or Path("runs") / time.strftime("bench-updates-%Y%m%d-%H%M%S")
    cfg = UpdatesBenchConfig(
        game=game,
        work_dir=work,
        updates=updates,
        rounds=rounds,
        steps=steps,
        store=store.value,
        learners=learners,
        algorithm=doc.get("algorithm"),
        hyperparameters=doc.get("hyperparameters", {}),
    )
    _print_result("updates", lambda: run_updates_bench(cfg))


@bench_app.command("judge")
def bench_judge(
    trials: Annotated[int, typer.Option("--trials", min=1, help="Simulated canaries per distribution and shift.")] = (
        JudgeBenchConfig.trials
    ),
    seed: Annotated[int, typer.Option("--seed")] = JudgeBenchConfig.seed,
    margin_sd: Annotated[
        float, typer.Option("--margin-sd", min=0.0, help="The judge's margin, in sd of the stable version's returns.")
    ] = JudgePolicy.margin_sd,
    alpha: Annotated[
        float, typer.Option("--alpha", min=0.0001, max=0.5, help="Each error rate's bound over all looks.")
    ] = JudgePolicy.alpha,
) -> None:
    """The release judge's false-promotion and false-rollback rates, by simulation (a table, then one JSON line)."""
    from rich.console import Console
    from rich.table import Table

    from rlplatform.bench.judge import run_judge_bench

    result = run_judge_bench(JudgeBenchConfig(trials, seed, JudgePolicy(margin_sd=margin_sd, alpha=alpha)))
    table = Table(title=f"release judge, {trials} trials per row (margin {margin_sd} sd, alpha {alpha})")
    columns = ("returns", "candidate shift (sd)", "promoted", "rolled back", "of which undecided", "median episodes")
    for column in columns:
        table.add_column(column)
    for row in result["rows"]:
        cells = (row["promoted"], row["rolled_back"], row["of_which_undecided"], row["median_episodes_per_version"])
        table.add_row(row["distribution"], f"{row['shift_sd']:+g}", *(f"{c:g}" for c in cells))
    Console(stderr=True).print(table)
    print(json.dumps(result), flush=True)


@bench_app.command("store")
def bench_store(
    store: Annotated[
        StoreName, typer.Option("--store", help="sqlite (a new file) or cassandra (RLP_CASSANDRA_*).")
    ] = StoreName.sqlite,
    transitions: Annotated[int, typer.Option("--transitions", help="Transitions written, in chunks.")] = 100_000,
    chunk_steps: Annotated[int, typer.Option("--chunk-steps", help="Steps per write (a client chunk).")] = 256,
    samples: Annotated[int, typer.Option("--samples", help="Samples of 256 draws with 2 followers each.")] = 200,
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Default: runs/bench-store-<time>.")] = None,
) -> None:
    """The experience store alone, in-process: write and sample throughput, client CPU and requests per
    transition."""
    import time

    from rlplatform.bench.store import BenchStoreError, StoreBenchConfig, check_options, run_store_bench

    try:
        check_options(transitions, chunk_steps, samples)
    except BenchStoreError as exc:
        option, _, reason = str(exc).partition(": ")
        raise typer.BadParameter(reason, param_hint=option) from None
    work = (work_dir or Path("runs") / time.strftime("bench-store-%Y%m%d-%H%M%S")).resolve()
    cfg = StoreBenchConfig(
        store=store.value, transitions=transitions, chunk_steps=chunk_steps, samples=samples, work_dir=work
    )
    _print_result("store", lambda: run_store_bench(cfg))


@bench_app.command("dashboard")
def bench_dashboard(
    transitions: Annotated[
        int, typer.Option("--transitions", help="Steps stored before the dashboard opens (over all games).")
    ] = 1_000_000,
    games: Annotated[int, typer.Option("--games", help="Games, each with a table of its own.")] = 1,
    new_steps: Annotated[
        int, typer.Option("--new-steps", help="Steps stored before each refresh of the new-steps part.")
    ] = 10_000,
    refreshes: Annotated[int, typer.Option("--refreshes", help="Timed refreshes per steady-state part.")] = 5,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir", help="Holds the SQLite store, deleted at the end. Default: runs/bench-dashboard-<time>."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "WARNING",
) -> None:
    """What one dashboard refresh costs beside a large SQLite store: catching up, idle, with new steps, and the
    full recompute of live returns it replaces."""
    import time

    from rlplatform.dashboard.bench import BenchDashboardError, DashboardBenchConfig, check_options, run_dashboard_bench

    configure_logging(log_level)
    work = (work_dir or Path("runs") / time.strftime("bench-dashboard-%Y%m%d-%H%M%S")).resolve()
    cfg = DashboardBenchConfig(
        transitions=transitions, games=games, new_steps=new_steps, refreshes=refreshes, work_dir=work
    )
    try:
        check_options(cfg)
    except BenchDashboardError as exc:
        option, _, reason = str(exc).partition(": ")
        raise typer.BadParameter(reason, param_hint=option) from None
    processes.interrupt_on_sigterm()
    _print_result("dashboard", lambda: run_dashboard_bench(cfg))


@bench_app.command("ingest")
def bench_ingest(
    seconds: Annotated[float, typer.Option("--seconds", min=1, help="How long producers push.")] = 30.0,
    producers: Annotated[int, typer.Option("--producers", min=1, max=32, help="Producer processes.")] = 2,
    shards: Annotated[int, typer.Option("--shards", min=1, max=64)] = 4,
    chunk_steps: Annotated[int, typer.Option("--chunk-steps", min=1, max=1024, help="Steps per record.")] = 256,
    compress: Annotated[bool, typer.Option("--compress/--no-compress", help="gzip records in producers.")] = True,
    rate: Annotated[
        float, typer.Option("--rate", min=0, help="Offered steps/s over all producers; 0 = as fast as they can.")
    ] = 60_000,
    crash_restart: Annotated[
        bool, typer.Option("--crash-restart", help="kill -9 the ingest job mid-stream, restart it, reconcile.")
    ] = False,
    reshard_to: Annotated[
        int | None, typer.Option("--reshard-to", min=1, help="Raise the shard count to this mid-stream.")
    ] = None,
    against: Annotated[
        list[str] | None,
        typer.Option(
            "--against",
            metavar="KINESIS+STORE",
            help="Target, repeatable (run one after the other). KINESIS: 'moto' (embedded, started here) or a"
            " running emulator's endpoint, e.g. http://127.0.0.1:4566 (LocalStack); STORE: 'sqlite' (a fresh file)"
            " or 'cassandra' (the RLP_CASSANDRA_* cluster, in a fresh keyspace bench_<hex>, dropped at the end)."
            " Each run uses a fresh stream bench-<hex> with --shards shards, deleted at the end. Several targets"
            " print a JSON object keyed by target. --reshard-to is refused unless every KINESIS is moto."
            " Default: moto+sqlite.",
        ),
    ] = None,
    master: Annotated[
        str,
        typer.Option(
            "--master",
            help="The ingest job's Spark master: local[2], or a standalone master spark://HOST:PORT (its executors"
            " then get this machine's AWS endpoint from the job; their CPU is counted when they run here).",
        ),
    ] = "local[2]",
    junk_ids: Annotated[
        int,
        typer.Option(
            "--junk-ids",
            min=0,
            help="Add a hostile client naming this many undeclared game ids in turn (each record dead-lettered)"
            " beside the good producers; 0: none.",
        ),
    ] = 0,
    junk_rate: Annotated[
        float, typer.Option("--junk-rate", min=1, help="The hostile client's records/s (with --junk-ids).")
    ] = 175.0,
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Default: runs/bench-<timestamp>.")] = None,
) -> None:
    """End-to-end ingest throughput and latency (producer -> Kinesis -> Spark -> store).

    An unreachable endpoint or Cassandra, or a refused option, exits with code 2 and a one-line error."""
    import time

    from rlplatform.bench.ingest import (
        BenchTargetError,
        IngestBenchConfig,
        Target,
        check_options,
        parse_target,
        run_ingest_bench,
    )

    try:
        targets = tuple(parse_target(t) for t in against) if against else (Target(),)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--against "), param_hint="--against") from None
    try:
        check_options(targets, reshard_to)
    except BenchTargetError as exc:
        typer.echo(f"bench ingest: {exc}", err=True)
        raise typer.Exit(2) from None

    processes.interrupt_on_sigterm()
    work = work_dir or Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S")
    try:
        result = run_ingest_bench(
            IngestBenchConfig(
                work_dir=work.resolve(),
                seconds=seconds,
                producers=producers,
                shards=shards,
                chunk_steps=chunk_steps,
                compress=compress,
                rate=rate or None,
                crash_restart=crash_restart,
                reshard_to=reshard_to,
                targets=targets,
                master=master,
                junk_ids=junk_ids,
                junk_records_per_s=junk_rate,
            )
        )
    except BenchTargetError as exc:
        typer.echo(f"bench ingest: {exc}", err=True)
        raise typer.Exit(2) from None
    print(json.dumps(result), flush=True)


def _print_result(bench: str, run: Callable[[], dict]) -> None:
    """Run a bench and print its result as the last line; a store that does not answer is exit 2, one line."""
    from rlplatform.store import StoreUnreachable

    try:
        result = run()
    except StoreUnreachable as exc:
        typer.echo(f"bench {bench}: {exc}", err=True)
        raise typer.Exit(2) from None
    print(json.dumps(result), flush=True)

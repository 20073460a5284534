"""``mpiscore score ...``: options -> JobConfig -> api.run -> exit code. No logic of its own.

As the entry point, this is the one place that decides to abort the MPI job:
an error every rank saw (bad input found during set-up) exits cleanly with
one line from rank 0; an error only one rank saw aborts the whole job at
once, so no other rank waits forever.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .config import GRAPH_OPTIMIZATION_LEVELS, JobConfig, config_from_options
from .errors import ConfigError, MpiscoreError
from .placement import check_world
from .rank.pool import ScorerPool, start_pool
from .rank.process import ScorerProcess
from .rank.world import MpiWorld, World
from .report import configure_early_stderr, early_stderr, log_start, stop_early_stderr

ABORT_GRACE_SECONDS = 0.5


class OneLineError(click.ClickException):
    """An MpiscoreError found while click parses the options (a bad job file): one line,
    the error's exit code."""

    def __init__(self, error: MpiscoreError) -> None:
        super().__init__(str(error))
        self.error = error
        self.exit_code = error.exit_code  # type: ignore[misc]  # click sets it per instance too

    def show(self, file: Any = None) -> None:
        click.echo(f"mpiscore: {type(self.error).__name__}: {self.error}", err=True)


def _job_file(ctx: click.Context, path: Path | None) -> None:
    """``--config job.toml`` (or an Azure ``parallel.yml``): its values become the options'
    defaults, so any option given on the command line wins (click's
    ParameterSource.DEFAULT_MAP); what a YAML held that has no effect, rank 0 names."""
    if path is None:
        return
    from .jobfile import option_kinds, read_job  # only with --config (tomllib, YAML: ~20 ms)

    try:
        values, ignored = read_job(path, option_kinds(ctx.command.params))
    except MpiscoreError as exc:
        raise OneLineError(exc) from exc
    if ignored and launcher_rank() == 0:
        click.echo(f"mpiscore: warning: {path}: {ignored}", err=True)
    ctx.default_map = {**(ctx.default_map or {}), **values}


RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")
QUIET_OPTIONS = {"-h", "--help", "--version"}


def launcher_rank() -> int:
    """This process's rank as its launcher (MPICH, PMIx, Open MPI, Slurm) set it, before
    MPI is initialised; 0 when not launched as a rank."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


class _Main(click.Group):
    """Click's own messages (usage errors, --help, --version) come before mpiscore's
    handling: under mpiexec only rank 0 prints them, every rank exits with their code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if launcher_rank() == 0 or kwargs.get("standalone_mode") is False:
            return super().main(*args, **kwargs)
        argv = kwargs.get("args", args[0] if args else None)
        if QUIET_OPTIONS & set(sys.argv[1:] if argv is None else argv):
            sys.exit(0)  # rank 0 prints the help or version
        try:
            code = super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.ClickException as exc:
            code = exc.exit_code
        except click.Abort:
            code = 1
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mpiscore")
def main() -> None:
    """Score an ONNX model over HDF5 or Parquet data with MPI."""


@main.command()
@click.option("--model", type=click.Path(path_type=Path),
              help="The .onnx model file [default: none: give it or --entry-script].")
@click.option("--entry-script", type=click.Path(path_type=Path),
              help="A Python scoring script with init() and run(mini_batch), as Azure ML's "
              "parallel-run step takes; words after -- become its sys.argv[1:] "
              "[default: none, score --model].")
@click.option("--input", "inputs", required=True, multiple=True, metavar="PATH[:/DATASET]",
              help="Input file, glob or Parquet directory; HDF5 dataset after a colon. Repeatable.")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="Output .h5 file or Parquet dataset directory.")
@click.option("--input-mode", type=click.Choice(["auto", "tabular", "files"]), default="auto",
              show_default=True, help="tabular: rows of HDF5/Parquet; files: every input file "
              "is one item, and run() gets a list of paths; auto = files when the inputs are "
              "neither HDF5 nor Parquet.")
@click.option("--batch-format", type=click.Choice(["pandas", "numpy", "arrow"]),
              default="pandas", show_default=True, help="What an entry script's run() gets "
              "for Parquet rows: a DataFrame, a dict of arrays or a pyarrow.Table (HDF5 gives "
              "arrays).")
@click.option("--output-action", type=click.Choice(["rows", "append_row", "summary_only"]),
              default="rows", show_default=True, help="rows: run()'s results, one per item, "
              "to HDF5/Parquet; append_row: each returned element one line of the text file "
              "OUTPUT, in input order; summary_only: the script writes its own files into "
              "OUTPUT (a directory).")
@click.option("--partition-by", metavar="COL[,COL]", help="Parquet: one mini-batch per "
              "distinct value of these columns (or key=value/ directories) [default: none].")
@click.option("--input-format", type=click.Choice(["auto", "hdf5", "parquet"]), default="auto",
              show_default=True, help="Input format; auto = from the suffix (.h5, .hdf5 or "
              ".parquet, or a directory).")
@click.option("--output-format", type=click.Choice(["auto", "hdf5", "parquet"]), default="auto",
              show_default=True, help="Output format; auto = HDF5 for .h5/.hdf5, a Parquet "
              "dataset directory for .parquet, a name without a suffix or a directory (another "
              "suffix is refused).")
@click.option("--map", "mapping", multiple=True, metavar="INPUT=SOURCE",
              help="Model input fed by an HDF5 dataset or comma-separated Parquet columns "
              "[default: the dataset named like the input, or the file's only one]. Repeatable.")
@click.option("--columns",
              help="Parquet feature columns, comma-separated, globs allowed [default: a column "
              "named like the model input, else the only fixed-size-list column].")
@click.option("--keep-columns", help="Parquet columns carried to the output, e.g. id "
              "[default: none].")
@click.option("--rename", multiple=True, metavar="OUTPUT=NAME",
              help="Rename a model output [default: the ONNX output names]. Repeatable.")
@click.option("--mini-batch-size", default="4MiB", show_default=True,
              help="Rows per batch (4096) or input bytes per batch (64MB, 1GiB).")
@click.option("--run-dir", type=click.Path(path_type=Path),
              help="Plan, summary and logs [default: OUTPUT.run].")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing output (only one mpiscore wrote) [default: refuse].")
@click.option("--intra-op-threads", default="auto", show_default=True,
              help="ONNX Runtime threads per scoring process; auto = the rank's cores / its "
              "scoring processes.")
@click.option("--inter-op-threads", default=1, show_default=True,
              help="ONNX Runtime threads running independent parts of the graph in parallel.")
@click.option("--graph-optimization", type=click.Choice(GRAPH_OPTIMIZATION_LEVELS),
              default="all", show_default=True, help="ONNX Runtime graph optimization level.")
@click.option("--providers", default="CPUExecutionProvider", show_default=True,
              help="Execution providers in order of preference, comma-separated.")
@click.option("--spin/--no-spin", default=False, show_default=True,
              help="Let ONNX Runtime threads spin while idle (faster on dedicated cores).")
@click.option("--cast", type=click.Choice(["safe", "same_kind", "unsafe"]), default="safe",
              show_default=True, help="Which dtype conversions of input data are allowed.")
@click.option("--run-rows", default="auto", show_default=True,
              help="Rows of a batch per ONNX Runtime run (a batch larger runs in slices); "
              "auto = each scoring process measures the fastest on its first batches (CPU), "
              "or whole batches (GPU providers).")
@click.option("--procs-per-rank", default="1", show_default=True,
              help="Scoring processes per rank, each with its own session; auto = one per "
              "core (or per --intra-op-threads cores).")
@click.option("--window", type=int,
              help="Batches each rank keeps assigned [default: 6 x procs + 1].")
@click.option("--max-retries", default=3, show_default=True,
              help="Tries after the first for a failing batch (on another rank if possible).")
@click.option("--batch-timeout", type=float, help="Seconds before a batch is abandoned and "
              "retried, its scoring process replaced [default: none].")
@click.option("--error-threshold", default=0, show_default=True,
              help="Items (rows, or files) that may fail for good before the job stops; "
              "-1 = any number (Azure's error_threshold).")
@click.option("--mini-batch-error-threshold", default=-1, show_default=True,
              help="Mini-batches that may fail for good before the job stops; -1 = no limit "
              "of its own (Azure's mini_batch_error_threshold).")
@click.option("--allowed-failed-percent", type=float,
              help="Share of rows (%) that may fail for good before the job stops "
              "[default: no limit by share].")
@click.option("--on-nan", type=click.Choice(["error", "pass"]), default="error",
              show_default=True, help="NaN/inf in float input: fail the batch, or score it.")
@click.option("--resume", is_flag=True, help="Finish an interrupted job (same --output, "
              "--run-dir), skipping the batches its journal lists [default: start afresh].")
@click.option("--stop-grace", default=30.0, show_default=True,
              help="Seconds after SIGTERM for running batches to finish before they are left "
              "for --resume.")
@click.option("--progress-seconds", default=10.0, show_default=True,
              help="Seconds between rank 0's progress lines (rows/s, ETA) on stderr.")
@click.option("--progress", type=click.Choice(["auto", "bar", "lines"]), default="auto",
              show_default=True, help="Rank 0's progress: a bar, or a line every "
              "--progress-seconds; auto = a bar when stderr is a terminal (under mpiexec it "
              "is a pipe: pass bar).")
@click.option("--quiet", is_flag=True, help="Rank 0's stderr: warnings and errors only, no "
              "progress (the logs in RUN_DIR/logs keep everything) [default: progress].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True, help="Lowest level logged, on stderr and "
              "in RUN_DIR/logs.")
@click.option("--progress-timeout", type=float, help="Stop the job (resumable, exit 75) when "
              "no batch completes anywhere for this many seconds [default: never].")
@click.option("--monitor-seconds", default=10.0, show_default=True,
              help="Seconds between resource samples (CPU %, RSS of each rank and its "
              "scoring processes) in RUN_DIR/events, shown by `mpiscore report`; 0: none.")
@click.option("--config", type=click.Path(path_type=Path), is_eager=True,
              callback=lambda ctx, param, value: _job_file(ctx, value), expose_value=False,
              help="A TOML job file: keys are these options' names with _ for - "
              "(mini_batch_size = 4096, input = [\"a.h5:/x\"]); or an Azure ML parallel job "
              "YAML (.yml); options given here win [default: none].")
@click.option("--dry-run", is_flag=True, help="Check everything the job would, time a few real "
              "batches (~2.5 s) and print the plan and the estimated wall time, core-hours "
              "and Slurm --time; writes nothing [default: run the job].")
@click.option("--ranks", type=int, help="With --dry-run: estimate for this many ranks "
              "[default: the ranks it runs with].")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: JSON for scripts "
              "[default: text].")
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- SCRIPT_ARGS]")
@click.pass_obj
def score(early: list[ScorerProcess] | None, **options: Any) -> None:
    """Score MODEL (or an entry script) over INPUT, writing one output row per input row to
    OUTPUT.

    \b
    Examples:
      mpiexec -n 64 mpiscore score --model model.onnx \\
          --input 'data/*.h5:/features' --output scores.h5
      mpiexec -n 2 mpiscore score --model model.onnx --input data.parquet \\
          --columns 'f*' --keep-columns id --output scores.parquet
      srun mpiscore score --model model.onnx --input 'data/*.h5' \\
          --output scores.h5 --resume    # finish an interrupted job
      mpiexec -n 2 mpiscore score --entry-script score.py --input 'data/*.parquet' \\
          --output scores.txt --output-action append_row -- --model_dir ./model
    """
    world = MpiWorld.comm_world()
    rank, size = world.rank, world.size
    early_stderr(rank, size, world.hostname())  # stderr lines before the run directory exists
    dry, ranks, as_json = options.pop("dry_run"), options.pop("ranks"), options.pop("as_json")
    try:
        check_world(size)  # srun without a working --mpi: N copies of 1 rank
        options["input"], options["map"] = options.pop("inputs"), options.pop("mapping")
        config = config_from_options(options)
        configure_early_stderr(config)
        if ranks is not None and ranks < 1:
            raise ConfigError("--ranks must be at least 1")
        if not dry and (ranks is not None or as_json):
            raise ConfigError("--ranks and --json are --dry-run's: add --dry-run, or leave "
                              "them out")
    except MpiscoreError as exc:  # every rank parsed the same options: no abort needed
        _fail(world, f"{type(exc).__name__}: {exc}", exc.exit_code, collective=True)
    pool = start_pool(config, world, early or [])
    try:
        if dry:
            _dry_run(config, world, pool, ranks, as_json)
            return
        if rank == 0:  # its first scoring process checks the job meanwhile
            log_start(config, size, pool.size)
            pool.prepare(config)
        pool.preopen(config)  # the others open the model's session meanwhile
        from .api import run  # heavy (h5py): imported while the scoring processes start

        run(config, world, pool)
        world.finalize()
    except MpiscoreError as exc:
        _fail(world, f"{type(exc).__name__}: {exc}", exc.exit_code, collective=exc.collective)
    except Exception:
        _fail(world, traceback.format_exc().rstrip(), 1, collective=False)
    finally:
        stop_early_stderr()


def _dry_run(config: JobConfig, world: World, pool: ScorerPool, ranks: int | None,
             as_json: bool) -> None:
    """``--dry-run``: the plan, the calibration and the estimate, printed by rank 0."""
    from .dry_run import dry_run
    from .estimate import describe, to_json

    dry, guess = dry_run(config, world, pool, ranks)
    if world.rank == 0:
        click.echo(json.dumps(to_json(dry, guess), indent=2) if as_json
                   else describe(dry, guess))
    world.finalize()


@main.command("inspect")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts [default: text].")
def inspect_command(path: str, as_json: bool) -> None:
    """What PATH holds: an .onnx model (inputs, outputs, opsets, producer, size, execution
    providers), an HDF5 file (datasets, shapes, dtypes, chunks, compression) or Parquet
    files, directories or globs (schema, rows, row groups, files). Needs no MPI."""
    from .inspect import describe, inspect_path

    info = _or_exit(lambda: inspect_path(path))
    click.echo(json.dumps(info, indent=2) if as_json else describe(info))



@main.command("status")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts [default: text].")
@click.option("--watch", is_flag=True, help="Refresh every 2 s until the job ends; Ctrl-C "
              "leaves [default: print once].")
def status_command(run_dir: Path, as_json: bool, watch: bool) -> None:
    """How far the job of RUN_DIR is: state, rows, rows/s, ETA, batches, ranks. Reads only
    the run directory's files, so it works from any node, after the job too."""
    from .rank.status import RUNNING, STATUS_SECONDS, describe_status, job_status

    try:
        while True:
            info = _or_exit(lambda: job_status(run_dir))
            if watch and not as_json and sys.stdout.isatty():
                click.clear()
            click.echo(json.dumps(info) if as_json else describe_status(info))
            if not watch or info["state"] not in RUNNING:
                return
            time.sleep(STATUS_SECONDS)
            if not as_json and not sys.stdout.isatty():
                click.echo()
    except KeyboardInterrupt:
        return


@main.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Where timeline.png and throughput.png go [default: RUN_DIR].")
def report_command(run_dir: Path, out: Path | None) -> None:
    """What happened in the run of RUN_DIR: rows, wall, rows/s, each rank's busy, idle,
    read, score and write time, stragglers, failures; and two pictures, timeline.png
    (each batch on its rank's scoring process) and throughput.png (rows/s, ranks busy,
    CPU and memory). Reads only the run directory's files."""
    from .run_report import build_report, describe_report, draw

    report = _or_exit(lambda: build_report(run_dir))
    click.echo(describe_report(report))
    for path in _or_exit(lambda: draw(run_dir, out or run_dir)):
        click.echo(f"wrote {path}")


def _or_exit(step: Callable[[], Any]) -> Any:
    """Run a command's step; an MpiscoreError is one line on stderr and its exit code."""
    try:
        return step()
    except MpiscoreError as exc:
        click.echo(f"mpiscore: {type(exc).__name__}: {exc}", err=True)
        sys.exit(exc.exit_code)


def _fail(world: World, message: str, code: int, collective: bool) -> NoReturn:
    """Say the error once per job and exit with its code: an error every rank saw, from
    rank 0, leaving cleanly; one this rank alone saw, from it, aborting every rank."""
    rank, size = world.rank, world.size
    if not collective or rank == 0:
        prefix = "" if collective or size == 1 else f"[rank {rank} of {size}] "
        click.echo(f"mpiscore: {prefix}{message}", err=True)
    sys.stderr.flush()
    if collective:
        world.finalize()
    elif size > 1:
        time.sleep(ABORT_GRACE_SECONDS)  # let the launcher forward the line before the kill
        world.abort(code)
    sys.exit(code)


SLURM_FIELDS = ("output", "run_dir", "stop_grace", "procs_per_rank", "intra_op_threads",
                "overwrite", "script_args")  # SlurmJob's; the other score options as given


@main.command()
@click.option("--nodes", default=1, show_default=True, help="Nodes (#SBATCH --nodes).")
@click.option("--ntasks-per-node", type=int,
              help="Ranks per node [default: one per GPU, else 1].")
@click.option("--cpus-per-task", type=int, help="CPUs per rank; --intra-op-threads becomes "
              "these / --procs-per-rank unless given [default: the partition's].")
@click.option("--gpus-per-node", type=int, help="GPUs per node (one rank per GPU; add "
              "--providers CUDAExecutionProvider,CPUExecutionProvider) [default: none].")
@click.option("--time", "walltime", metavar="D-HH:MM:SS",
              help="Walltime limit per run [default: the partition's].")
@click.option("--partition", help="Slurm partition [default: the site's].")
@click.option("--account", help="Slurm account [default: yours].")
@click.option("--mpi", metavar="PLUGIN", help="srun --mpi plugin, see `srun --mpi=list` "
              "[default: pmi2].")
@click.option("--launcher", type=click.Choice(["srun", "mpiexec"]), default="srun",
              show_default=True, help="How the ranks start: srun --mpi=PLUGIN, or the MPI's "
              "mpiexec inside the allocation.")
@click.option("--max-restarts", default=10, show_default=True,
              help="Requeues after walltime stops before the job gives up.")
@click.option("--submit", is_flag=True, help="Submit it with sbatch and print the job id "
              "[default: print the script].")
@click.pass_context
def slurm(ctx: click.Context, nodes: int, ntasks_per_node: int | None,
          cpus_per_task: int | None, gpus_per_node: int | None, walltime: str | None,
          partition: str | None, account: str | None, mpi: str | None, launcher: str,
          max_restarts: int, submit: bool, **options: Any) -> None:
    """Write a Slurm batch script for the job the score options describe (printed, or
    submitted with --submit): it stops before its walltime, requeues and resumes.

    \b
    Examples:
      mpiscore slurm --nodes 2 --ntasks-per-node 4 --cpus-per-task 8 --time 1-00:00:00 \\
          --model model.onnx --input 'data/*.h5:/features' --output scores.h5 > job.sbatch
      mpiscore slurm --time 12:00:00 --launcher mpiexec --model model.onnx \\
          --input data.parquet --columns 'f*' --output scores.parquet --submit
    """
    from . import slurm as batch

    source = click.core.ParameterSource.DEFAULT
    given = [name for name in options if name not in SLURM_FIELDS
             and ctx.get_parameter_source(name) not in (source, None)]
    try:
        batch.refuse_run_options({name: options[name] for name in given})
        job = batch.SlurmJob(
            batch.command_line(score.params, options, given), options["output"],
            options["run_dir"], options["stop_grace"], options["procs_per_rank"],
            options["intra_op_threads"], options["overwrite"], nodes, ntasks_per_node,
            cpus_per_task, gpus_per_node, walltime, partition, account, launcher,
            mpi, max_restarts, script_args=tuple(options["script_args"]))
        script = batch.render_script(job)
        click.echo(batch.submit(script) if submit else script, nl=submit)
    except MpiscoreError as exc:
        click.echo(f"mpiscore: {type(exc).__name__}: {exc}", err=True)
        sys.exit(exc.exit_code)


slurm.params += score.params  # every score option, as score has it

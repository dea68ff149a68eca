"""Dask workers as SLURM jobs, through dask-jobqueue (the optional extra ``wsi-pipeline[hpc]``): the options a
cluster user gives (a TOML file, overridden field by field), and the cluster they start, its jobs cancelled
when it closes."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_pipeline.core.errors import ClusterError, InputError

if TYPE_CHECKING:
    from dask_jobqueue import SLURMCluster

JOB_NAME = "wsi-score"  # each worker job's name in squeue
DEATH_TIMEOUT_S = 60  # a worker that cannot reach its scheduler this long exits, ending its job
_WALLTIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}")  # SLURM's MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
_TEXT_FIELDS = ("partition", "account", "gres", "python", "log_dir", "interface")


@dataclass(frozen=True, kw_only=True)
class SlurmOptions:
    """Worker jobs on SLURM. On CPUs a job runs one single-threaded worker process per core, as the local
    cluster does; with GPUs (``gres`` ``gpu:N``) one worker process per GPU, each seeing only its own GPU
    and running ``cores / N`` threads."""

    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None
    jobs: int = 1  # worker jobs; the minimum when max_jobs is given
    max_jobs: int | None = None  # adaptive: up to this many jobs while blocks wait
    cores: int = 1  # per job
    memory: str = "4GB"  # per job, shared by its worker processes
    walltime: str = "01:00:00"
    gres: str | None = None  # generic resources per job, e.g. "gpu:2" or "gpu:a100:1"
    sbatch: tuple[str, ...] = ()  # further #SBATCH options, e.g. "--qos=long"
    python: str | None = None  # the workers' Python; None: the client's (sys.executable)
    log_dir: str | None = None  # the jobs' output files; None: SLURM's default (slurm-JOBID.out)
    interface: str | None = None  # the network interface of scheduler and workers, e.g. "ib0"

    @property
    def gpus(self) -> int:
        """GPUs per job, counted from ``gres``."""
        count = 0
        for item in (self.gres or "").split(","):
            name, *rest = item.split(":")
            if name == "gpu":
                count += int(rest[-1]) if rest and rest[-1].isdigit() else 1
        return count

    def validate(self) -> None:
        """Raise a one-line ``ValueError`` naming the first option that SLURM or a worker could not use."""
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"SLURM {name} must be a non-empty string, not {value!r}")
        for name in ("jobs", "cores"):
            _check_count(name, getattr(self, name), 1)
        if self.max_jobs is not None:
            _check_count("max_jobs", self.max_jobs, self.jobs)
        if not isinstance(self.memory, str) or _bytes(self.memory) <= 0:
            raise ValueError(f"SLURM memory per job must be a size such as 8GB, not {self.memory!r}")
        if not isinstance(self.walltime, str) or not _WALLTIME.fullmatch(self.walltime):
            raise ValueError(f"SLURM walltime must be HH:MM:SS or D-HH:MM:SS, not {self.walltime!r}")
        if self.gres is not None and not all(_gres_item(item) for item in self.gres.split(",")):
            raise ValueError(f"SLURM gres must be NAME[:TYPE][:COUNT],..., such as gpu:2, not {self.gres!r}")
        if self.gpus and self.cores % self.gpus:
            raise ValueError(
                f"SLURM cores per job ({self.cores}) must be a multiple of its GPUs ({self.gpus})"
            )
        if not isinstance(self.sbatch, tuple | list):
            raise ValueError(f"SLURM sbatch must be a list of options, not {self.sbatch!r}")
        for line in self.sbatch:
            if not isinstance(line, str) or not line.startswith("-") or "\n" in line:
                raise ValueError(
                    f"each SLURM sbatch line must be one option, such as --qos=long, not {line!r}"
                )


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"SLURM {name} must be a whole number of at least {minimum}, not {value!r}")


def _bytes(size: str) -> int:
    from dask.utils import parse_bytes  # dask loaded when a run starts, not for wsi-score --help

    try:
        return parse_bytes(size)
    except ValueError:
        return 0


def _gres_item(item: str) -> bool:
    name, *rest = item.split(":")
    return bool(name) and len(rest) <= 2 and all(rest) and (len(rest) < 2 or rest[1].isdigit())


def read_slurm_config(path: str | Path) -> dict[str, Any]:
    """The options of a TOML file whose keys are ``SlurmOptions`` fields (``sbatch`` a list of strings).

    Raises:
        InputError: the file cannot be read, is not TOML, or has a key that is not an option.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    try:
        config = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(path, f"cannot read the SLURM configuration: {error.strerror}") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(path, f"not a TOML file: {error}") from error
    known = [f.name for f in fields(SlurmOptions)]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise InputError(path, f"unknown SLURM option {unknown[0]!r} (options: {', '.join(known)})")
    return config


def slurm_options(config: str | Path | None = None, **overrides: Any) -> SlurmOptions:
    """Validated options: the TOML file ``config`` (if any), each field overridden by a ``overrides`` value
    that is not None."""
    values = read_slurm_config(config) if config is not None else {}
    values.update({name: value for name, value in overrides.items() if value is not None})
    if isinstance(values.get("sbatch"), list):
        values["sbatch"] = tuple(values["sbatch"])
    options = SlurmOptions(**values)
    options.validate()
    return options


@contextlib.contextmanager
def slurm_cluster(options: SlurmOptions, *, environment: Mapping[str, object]) -> Iterator[SLURMCluster]:
    """A dask-jobqueue ``SLURMCluster`` with ``options.jobs`` worker jobs (a lost job is submitted again), or
    between ``jobs`` and ``max_jobs``; every job is cancelled on leaving the context, however it is left.

    Args:
        options: the jobs.
        environment: variables set in each job and given to its worker processes (as the local cluster's
            ``distributed.nanny.pre-spawn-environ``: Dask's other defaults there are unset).

    Raises:
        ClusterError: ``sbatch`` or dask-jobqueue is missing, or SLURM refuses the job (checked with
            ``sbatch --test-only`` before any job is submitted).
    """
    options.validate()
    if shutil.which("sbatch") is None:
        raise ClusterError("sbatch not found on PATH: --scheduler slurm runs where SLURM's commands do")
    cluster = _slurm_cluster_class()(**_job_arguments(options, environment))
    try:
        _test_submission(cluster.job_script())
        cluster.scale(jobs=options.jobs)
        # adaptive even between equal bounds: it keeps submitting jobs to replace the ones lost
        cluster.adapt(minimum_jobs=options.jobs, maximum_jobs=options.max_jobs or options.jobs)
        yield cluster
    finally:
        cluster.close()


def _slurm_cluster_class() -> type[SLURMCluster]:
    """dask-jobqueue's ``SLURMCluster``, with Ctrl-C left as it was: importing dask-jobqueue (its ``runner``
    module, 0.9) makes SIGINT call ``sys.exit``, which a run in progress does not stop on."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ClusterError(
            'the slurm scheduler needs dask-jobqueue: pip install "wsi-pipeline[hpc]"'
        ) from None
    finally:
        if in_main_thread and handler is not None:
            signal.signal(signal.SIGINT, handler)
    return SLURMCluster


def _job_arguments(options: SlurmOptions, environment: Mapping[str, object]) -> dict[str, Any]:
    """``SLURMCluster``'s arguments for ``options``."""
    import dask

    pre_spawn = dict.fromkeys(dask.config.get("distributed.nanny.pre-spawn-environ")) | dict(environment)
    prologue = [f"export {name}={value}" for name, value in environment.items()]
    literal = repr(pre_spawn).replace("'", '"')  # read by Dask as a Python literal: names and numbers or None
    prologue.append(f"export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON={shlex.quote(literal)}")
    directives = [*options.sbatch, *([f"--gres={options.gres}"] if options.gres else [])]
    return {
        "queue": options.partition,
        "account": options.account,
        "cores": options.cores,
        "processes": options.gpus or options.cores,
        "memory": options.memory,
        "walltime": options.walltime,
        "job_extra_directives": directives,
        "job_script_prologue": prologue,
        "worker_extra_args": ["--preload", __name__] if options.gpus > 1 else [],
        "python": options.python or sys.executable,
        "log_directory": options.log_dir,
        "interface": options.interface,
        "job_name": JOB_NAME,
        "death_timeout": DEATH_TIMEOUT_S,
        "scheduler_options": {"dashboard_address": ":0"},
    }


def _test_submission(job_script: str) -> None:
    """Raise a ``ClusterError`` with SLURM's reasons when ``sbatch --test-only`` refuses the job script."""
    try:
        run = subprocess.run(
            ["sbatch", "--test-only"],
            input=job_script,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ClusterError("SLURM did not answer sbatch --test-only in 120 s") from None
    if run.returncode != 0:
        reasons = [line.removeprefix("sbatch: error: ") for line in run.stderr.splitlines() if line.strip()]
        raise ClusterError(f"SLURM refused the worker job: {'; '.join(reasons) or run.returncode}")


def worker_gpu(worker_name: str, job_gpus: str | None) -> str:
    """The GPU of the worker process ``NAME-I`` (the I-th of its job's): the I-th of ``job_gpus`` (the job's
    ``CUDA_VISIBLE_DEVICES``), or I when SLURM set none."""
    index = int(worker_name.rsplit("-", 1)[1])
    return job_gpus.split(",")[index] if job_gpus else str(index)


def dask_setup(worker: Any) -> None:
    """Dask preload of the workers of a job with several GPUs: each sees only its own."""
    os.environ["CUDA_VISIBLE_DEVICES"] = worker_gpu(str(worker.name), os.environ.get("CUDA_VISIBLE_DEVICES"))

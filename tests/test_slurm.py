"""``--scheduler slurm``: the options (validated, from a TOML file overridden by flags), the job script they
make, and runs on a real single-node SLURM (``.ci/start_slurm.sh``, marker ``slurm``): the local run's
heatmaps, jobs cancelled when a run ends or is interrupted, a lost job submitted again, one-line errors."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from wsi_pipeline import (
    ClusterError,
    InputError,
    SlurmOptions,
    dask_client,
    read_heatmap,
)
from wsi_pipeline.cli.score import main
from wsi_pipeline.scoring.cluster import WORKER_ENVIRONMENT
from wsi_pipeline.scoring.slurm import (
    JOB_NAME,
    _job_arguments,
    _slurm_cluster_class,
    slurm_options,
    worker_gpu,
)

from .conftest import CLUSTER_BLOCK_CELLS, REPO

START_SLURM = REPO / ".ci" / "start_slurm.sh"
PARTITION = "cpu"  # the partition start_slurm.sh makes
TURN = Path(tempfile.gettempdir()) / "wsi_pipeline-slurm-tests.lock"  # held while a session's slurm tests run
ENVIRONMENT = {name: str(value) for name, value in WORKER_ENVIRONMENT.items()}


def slurm(test):
    """Mark a test as needing SLURM: it runs on the single-node SLURM of ``running_slurm``."""
    return pytest.mark.slurm(pytest.mark.slow(pytest.mark.usefixtures("running_slurm")(test)))


@pytest.fixture(scope="module")
def running_slurm() -> Iterator[None]:
    """SLURM answering on this machine, started by .ci/start_slurm.sh when needed, and this module's alone
    meanwhile (test sessions running at once on this machine take turns: each needs both cores); the tests
    are skipped only where it cannot be started (not root, no apt-get), failed where it should have been."""
    run = subprocess.run(["bash", str(START_SLURM)], capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"no SLURM here and none can be started: {run.stderr.strip()}")
        pytest.fail(f"{START_SLURM} failed: {run.stderr.strip()}")
    with open(TURN, "a") as turn:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(turn, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"another test session held {TURN} for 15 minutes"
                time.sleep(0.5)
        yield


def wsi_score(*args: object) -> list[str]:
    """The wsi-score command line, as a terminal runs it: Ctrl-C (SIGINT) interrupts it even when this
    process was started with SIGINT ignored (as a background job of a script is)."""
    script = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); import sys; "
    script += "from wsi_pipeline.cli.score import main; sys.exit(main())"
    return [sys.executable, "-c", script, *map(str, args)]


def slurm_args(tmp_path: Path) -> list[object]:
    """Two one-core jobs on loopback (so nothing leaves this machine), their output in tmp_path/jobs, tagged
    with tmp_path."""
    jobs = ["--scheduler", "slurm", "--jobs", 2, "--job-log-dir", tmp_path / "jobs", "--interface", "lo"]
    return [*jobs, f"--sbatch={tag(tmp_path)}"]


def jobs_of(tmp_path: Path, **options: object) -> SlurmOptions:
    """``options`` for the jobs of the test of ``tmp_path``: on loopback, their output in tmp_path, tagged."""
    return SlurmOptions(
        partition=PARTITION,
        memory="2GB",
        log_dir=str(tmp_path),
        interface="lo",
        sbatch=(tag(tmp_path),),
        **options,
    )


def tag(tmp_path: Path) -> str:
    """The #SBATCH option that marks a test's jobs (their comment: the test's own folder)."""
    return f"--comment={tmp_path}"


def job_ids(log_dir: Path) -> set[str]:
    """The jobs a run submitted: SLURM wrote each one's output file (wsi-score-JOBID.err) as it started."""
    return {path.stem.rsplit("-", 1)[1] for path in log_dir.glob(f"{JOB_NAME}-*.err")}


def queued(tmp_path: Path) -> set[str]:
    """The jobs of the test of ``tmp_path`` in squeue: pending, running or completing."""
    listed = subprocess.run(
        ["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True, check=True
    ).stdout
    return {
        line.split(" ", 1)[0] for line in listed.splitlines() if line.split(" ", 1)[1:] == [str(tmp_path)]
    }


def wait_until_gone(tmp_path: Path, timeout_s: float = 30.0) -> set[str]:
    """The jobs of the test of ``tmp_path`` still queued after ``timeout_s`` (a cancelled job completes in a
    moment)."""
    deadline = time.monotonic() + timeout_s
    while queued(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    return queued(tmp_path)


# options, config file and job script: no SLURM needed


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"jobs": 0}, "SLURM jobs must be a whole number of at least 1, not 0"),
        ({"jobs": 3, "max_jobs": 2}, "SLURM max_jobs must be a whole number of at least 3, not 2"),
        ({"cores": "4"}, "SLURM cores must be a whole number of at least 1, not '4'"),
        ({"memory": "lots"}, "SLURM memory per job must be a size such as 8GB, not 'lots'"),
        ({"walltime": "2h"}, "SLURM walltime must be HH:MM:SS or D-HH:MM:SS, not '2h'"),
        ({"gres": "gpu:a100:two"}, "SLURM gres must be NAME[:TYPE][:COUNT],..., such as gpu:2"),
        ({"gres": "gpu:2", "cores": 3}, "SLURM cores per job (3) must be a multiple of its GPUs (2)"),
        (
            {"sbatch": ("#SBATCH --qos=long",)},
            "each SLURM sbatch line must be one option, such as --qos=long",
        ),
        ({"partition": ""}, "SLURM partition must be a non-empty string, not ''"),
    ],
)
def test_options_are_refused_in_one_line(options, problem):
    with pytest.raises(ValueError, match="^" + re.escape(problem)):
        SlurmOptions(**options).validate()


@pytest.mark.parametrize(
    ("gres", "gpus"), [(None, 0), ("gpu", 1), ("gpu:2", 2), ("gpu:a100:2,nvme:1", 2), ("nvme:1", 0)]
)
def test_gpus_per_job_are_counted_from_gres(gres, gpus):
    assert SlurmOptions(gres=gres).gpus == gpus


def test_a_config_file_is_read_and_flags_override_it(tmp_path):
    config = tmp_path / "slurm.toml"
    config.write_text('partition = "gpu"\njobs = 4\nmemory = "64GB"\nsbatch = ["--qos=long"]\n')
    options = slurm_options(config, jobs=2, walltime="1-00:00:00", account=None)
    assert options == SlurmOptions(
        partition="gpu", jobs=2, memory="64GB", walltime="1-00:00:00", sbatch=("--qos=long",)
    )
    config.write_text('partition = "gpu"\nqueue = "x"\n')
    with pytest.raises(InputError, match=r"slurm.toml: unknown SLURM option 'queue' \(options: partition, "):
        slurm_options(config)
    config.write_text("jobs = \n")
    with pytest.raises(InputError, match=r"slurm\.toml: not a TOML file: "):
        slurm_options(config)
    with pytest.raises(InputError, match=r"missing\.toml: cannot read the SLURM configuration"):
        slurm_options(tmp_path / "missing.toml")


def test_slurm_options_need_the_slurm_scheduler(tmp_path, capsys):
    code = main(["slide.svs", "-o", str(tmp_path), "--partition", "cpu", "-q"])
    assert code == 2
    assert capsys.readouterr().err == (
        "wsi-score: error: --slurm-config and the SLURM options (--partition, --jobs, ...) need "
        "--scheduler slurm\n"
    )
    sample = REPO / "sample_slides" / "synthetic-node_19_000.svs"
    code = main([str(sample), "-o", str(tmp_path), "--scheduler", "slurm", "--workers", "4", "-q"])
    assert code == 2
    assert capsys.readouterr().err == (
        "wsi-score: error: a number of workers is for the auto, local and threads schedulers, not the slurm "
        "scheduler\n"
    )
    assert not tmp_path.joinpath("slides.csv").exists()  # refused before anything ran
    threads = dask_client(scheduler="threads", slurm=SlurmOptions())
    with pytest.raises(ValueError, match="SLURM options are for the slurm scheduler, not 'threads'"), threads:
        pass


def job_script(options: SlurmOptions) -> str:
    """The job script dask-jobqueue writes for ``options`` (its scheduler started, no job submitted)."""
    with _slurm_cluster_class()(
        **_job_arguments(replace(options, interface="lo"), WORKER_ENVIRONMENT)
    ) as cluster:
        return cluster.job_script()


def test_cpu_jobs_run_a_single_threaded_worker_per_core_as_the_local_cluster_does():
    script = job_script(
        SlurmOptions(partition="cpu", account="lab", cores=4, memory="16GB", sbatch=("--qos=long",))
    )
    for line in ("#SBATCH -p cpu", "#SBATCH -A lab", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=15G"):
        assert line in script.splitlines()
    assert "#SBATCH --qos=long" in script.splitlines() and "#SBATCH -t 01:00:00" in script.splitlines()
    assert " --nthreads 1 " in script and " --nworkers 4 " in script and "--preload" not in script
    assert f"{sys.executable} -m distributed.cli.dask_worker" in script
    for name, value in WORKER_ENVIRONMENT.items():
        assert f"export {name}={value}" in script
    # Dask's other pre-spawn variable (MALLOC_TRIM_THRESHOLD_) unset in the workers, as in the local cluster
    assert (
        'export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=\'{"MALLOC_TRIM_THRESHOLD_": None, "OMP' in script
    )


def test_gpu_job_scripts_start_a_worker_per_gpu_with_the_preload_that_pins_it():
    script = job_script(SlurmOptions(cores=8, gres="gpu:a100:2", python="/opt/env/bin/python"))
    assert "#SBATCH --gres=gpu:a100:2" in script.splitlines()
    assert " --nthreads 4 " in script and " --nworkers 2 " in script
    assert " --preload wsi_pipeline.scoring.slurm" in script
    assert "/opt/env/bin/python -m distributed.cli.dask_worker" in script
    assert worker_gpu("SLURMCluster-3-1", "4,5") == "5"
    assert worker_gpu("SLURMCluster-3-0", None) == "0"


def test_a_missing_sbatch_is_one_line(tmp_path, monkeypatch, capsys, cluster_slides, probe_model):
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands on it
    args = [cluster_slides[0], "-o", tmp_path / "out", "--model", probe_model, "--scheduler", "slurm"]
    assert main(list(map(str, args))) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "wsi-score: error: sbatch not found on PATH: --scheduler slurm runs where SLURM's commands do\n"
    )
    with pytest.raises(ClusterError, match="sbatch not found"), dask_client(scheduler="slurm"):
        pass


def test_a_missing_dask_jobqueue_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "sbatch").touch(mode=0o755)  # SLURM's commands found, dask-jobqueue not
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    with (
        pytest.raises(
            ClusterError,
            match=r'^the slurm scheduler needs dask-jobqueue: pip install "wsi-pipeline\[hpc\]"$',
        ),
        dask_client(scheduler="slurm"),
    ):
        pass


# on SLURM


@slurm
def test_two_jobs_give_the_local_heatmaps_and_are_gone_after(
    tmp_path, cluster_slides, probe_model, cluster_references
):
    config = tmp_path / "slurm.toml"  # the flags override the file: two jobs, not one
    config.write_text(f'partition = "{PARTITION}"\njobs = 1\nmemory = "2GB"\nwalltime = "00:10:00"\n')
    args = [
        *cluster_slides,
        "-o",
        tmp_path / "out",
        "--model",
        probe_model,
        "--block-cells",
        CLUSTER_BLOCK_CELLS,
        "-q",
    ]
    assert main([*map(str, args), "--slurm-config", str(config), *map(str, slurm_args(tmp_path))]) == 0
    for slide in cluster_slides:
        heatmap = read_heatmap(tmp_path / "out" / f"{slide.stem}.zarr")
        assert heatmap.complete and heatmap.metadata.devices == ("cpu",)
        np.testing.assert_array_equal(heatmap.probabilities, cluster_references[slide.stem])
    ids = job_ids(tmp_path / "jobs")
    assert len(ids) == 2
    assert wait_until_gone(tmp_path) == set()
    # the jobs' workers logged into the run's log, as the local cluster's do (no worker runs in this process)
    log = (tmp_path / "out" / "wsi-score.log").read_text()
    assert "distributed.worker INFO: Starting Worker plugin wsi-pipeline-preload-models" in log


@slurm
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_cancels_its_jobs_and_resumes(tmp_path, capsys, cluster_slides, probe_model, sig):
    """The signal comes once the first block is written; the run ends (130), its jobs leave the queue, and
    the same command on another scheduler finishes the heatmap from the blocks written."""
    out = tmp_path / "out"  # dense: 738 patches in 185 blocks, so that the run is interrupted mid-way
    args = [
        cluster_slides[0],
        "-o",
        out,
        "--model",
        probe_model,
        "--block-cells",
        CLUSTER_BLOCK_CELLS,
        "--stride",
        32,
        "-q",
    ]
    with subprocess.Popen(
        wsi_score(*args, *slurm_args(tmp_path)), stderr=subprocess.PIPE, text=True
    ) as process:
        done = out / "a.zarr" / "blocks_done" / "c"  # one file per block written
        deadline = time.monotonic() + 120
        while not (done.is_dir() and any(done.iterdir())):
            assert process.poll() is None and time.monotonic() < deadline, "no block was written"
            time.sleep(0.05)
        process.send_signal(sig)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.endswith("wsi-score: interrupted; the blocks written are kept: run again to resume\n")
    ids = job_ids(tmp_path / "jobs")
    assert len(ids) == 2
    assert wait_until_gone(tmp_path) == set()
    assert not read_heatmap(out / "a.zarr").complete
    if sig == signal.SIGTERM:
        assert main([*map(str, args), "--scheduler", "threads"]) == 0
        assert "resumed: " in capsys.readouterr().out and read_heatmap(out / "a.zarr").complete


@slurm
def test_a_lost_job_is_submitted_again_and_workers_get_the_local_environment(tmp_path):
    """A job cancelled behind the run's back (as walltime or preemption end one) is replaced; every worker
    has one BLAS/OpenMP thread and no MALLOC_TRIM_THRESHOLD_, as the local cluster's."""
    import dask

    options = jobs_of(tmp_path, jobs=2)
    # the cluster gives a lost worker's job up after this long (15 s by default)
    with (
        dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}),
        dask_client(scheduler="slurm", slurm=options) as client,
    ):
        client.wait_for_workers(2, timeout=120)
        environments = client.run(
            lambda: {name: os.environ.get(name) for name in ENVIRONMENT.keys() | {"MALLOC_TRIM_THRESHOLD_"}}
        )
        assert list(environments.values()) == [{**ENVIRONMENT, "MALLOC_TRIM_THRESHOLD_": None}] * 2
        first = job_ids(tmp_path)
        lost = min(first, key=int)
        subprocess.run(["scancel", lost], check=True)
        deadline = time.monotonic() + 120
        while len(job_ids(tmp_path)) < 3 or len(client.nthreads()) < 2:
            assert time.monotonic() < deadline, "the lost job was not replaced"
            time.sleep(0.2)
        assert lost not in queued(tmp_path)
    assert wait_until_gone(tmp_path) == set()


@slurm
def test_a_gpu_job_runs_a_worker_per_gpu_each_seeing_its_own(tmp_path):
    """The test SLURM's node has two GPU slots (no devices behind them): a job of two cores and two GPUs runs
    two single-threaded workers, each seeing one of the job's GPUs."""
    options = jobs_of(tmp_path, cores=2, gres="gpu:2")
    with dask_client(scheduler="slurm", slurm=options) as client:
        client.wait_for_workers(2, timeout=120)
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        threads = client.nthreads()
    assert sorted(seen.values()) == ["0", "1"] and list(threads.values()) == [1, 1]
    assert wait_until_gone(tmp_path) == set()


@slurm
def test_a_partition_slurm_refuses_is_one_line_and_submits_nothing(
    tmp_path, capsys, cluster_slides, probe_model
):
    args = [cluster_slides[0], "-o", tmp_path / "out", "--model", probe_model, *slurm_args(tmp_path)]
    assert main([*map(str, args), "--partition", "no-such-partition"]) == 2
    assert capsys.readouterr().err == (
        "wsi-score: error: SLURM refused the worker job: invalid partition specified: no-such-partition; "
        "allocation failure: Invalid partition name specified\n"
    )
    assert job_ids(tmp_path / "jobs") == set() and queued(tmp_path) == set()

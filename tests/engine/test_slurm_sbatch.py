"""deploy/slurm.sbatch runs on one machine as Slurm would run it on a one-node allocation.

Fake `srun` (runs its command once, here) and `scontrol` (the allocation is this machine); everything else is
real: `ray symmetric-run` starts a head with token auth, `ar-ray run` joins it, the ledger fills, Ray stops.

`ray symmetric-run` refuses to start where another Ray runs, and ends with `ray stop`, which stops every Ray on
the machine: the script therefore runs in a PID namespace of its own (`unshare --pid`, needs root or user
namespaces), where both see only its own processes, and everything in it dies with it. Without one the test is
skipped rather than stop other Rays on this machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers_targets import free_ports
from toys import make_toy

from ar_ray.ledger import store as ledger

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "deploy" / "slurm.sbatch"
BIN = Path(sys.executable).parent

FAKE_SRUN = """#!/bin/bash
# fake srun: one node, so run the command once, here (options are --name=value, as the script writes them)
echo "srun $*" >> "$FAKE_LOG"
while [[ "${1:-}" == -* ]]; do shift; done
exec "$@"
"""
FAKE_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_LOG"
[ "$1 $2" = "show hostnames" ] && hostname
"""


def _pid_namespace() -> str | None:
    """The prefix that runs a command in a PID namespace of its own, or None where that is not allowed."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "--pid", "--fork", "--mount-proc"]
    ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0
    if not ok:
        prefix = [unshare, "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0
    return prefix if ok else None


def test_the_sbatch_script_runs_ar_ray_on_a_one_node_allocation():
    prefix = _pid_namespace()
    if prefix is None:
        pytest.skip("no PID namespace here (unshare --pid): running ray symmetric-run would `ray stop` other Rays")
    work = Path(tempfile.mkdtemp(prefix="ars-"))  # short: Ray's socket paths must stay under 108 bytes
    try:
        fakes = work / "bin"
        fakes.mkdir()
        for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
            (fakes / name).write_text(text)
            (fakes / name).chmod(0o755)
        home = work / "home"
        home.mkdir()
        target = make_toy(work / "target", "[target]\nenv = { TOY_SLEEP = '0.1' }\n")
        gcs, dash, agent, agent_grpc, client, metrics, rt_env = free_ports(7)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "SLURM_")) and k not in ("PYTHONPATH", "AR_RAY_RUN_DIR")}
        env.update({
            "PATH": f"{fakes}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(home),
            "FAKE_LOG": str(work / "fake.log"), "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "1",
            "SLURM_JOB_NODELIST": socket.gethostname(), "SLURM_SUBMIT_DIR": str(work), "SLURM_CPUS_PER_TASK": "4",
            "AR_RAY_PORT": str(gcs),
            # ports of its own: the namespace hides other Rays' processes, not their ports
            "AR_RAY_START_ARGS": f"--temp-dir={work / 'ray'} --include-dashboard=false --disable-usage-stats "
                                 f"--dashboard-port={dash} --dashboard-agent-listen-port={agent} "
                                 f"--dashboard-agent-grpc-port={agent_grpc} --ray-client-server-port={client} "
                                 f"--metrics-export-port={metrics} --runtime-env-agent-port={rt_env}",
        })
        out = subprocess.run([*prefix, "bash", str(SBATCH), "--target", str(target), "--max-experiments", "2",
                              "--trainers", "2", "--acceptance", "greedy"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=240)
        text = out.stdout + out.stderr
        assert out.returncode == 0, text[-5000:]
        run_dir = work / "runs" / "slurm-4242"  # the default: under the submit dir, on the shared file system
        df = ledger.load(run_dir)
        ran = df[df.decision != "skip"]
        assert (ran.role == "baseline").sum() >= 1 and (ran.role == "screen").sum() == 2, ran
        assert set(ran.status) == {"ok"}
        assert "On head node" in text and f"run dir: {socket.gethostname()}:{run_dir}" in text, text[-3000:]
        srun = (work / "fake.log").read_text()
        assert "srun --nodes=1 --ntasks-per-node=1 ray symmetric-run" in srun and "--min-nodes 1" in srun, srun
        assert (home / ".ray" / "auth_token").is_file()  # the token it generated, where every node reads it
    finally:
        shutil.rmtree(work, ignore_errors=True)

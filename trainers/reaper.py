"""A tiny supervisor between a trainer actor and the training child.

    python reaper.py [--parent PID] [--grace S] [--max-procs N] [--quota-dir DIR --quota-bytes B]
                     [--rlimit NAME=VALUE]... [--verdict-fd FD] [--remove DIR] -- COMMAND...

It exists so that no process outlives an experiment, grandchildren included:
- it marks itself a child subreaper, so anything the child forks and orphans
  (even after setsid or a double fork) is re-parented to it, not to init;
- it asks the kernel for SIGTERM when its parent (the trainer actor) dies, so a
  `kill -9` of the actor still tears the tree down (with --parent, a parent
  that died before the reaper got that far is seen too: it runs nothing);
- when the child exits, or on SIGTERM/SIGINT, it kills every remaining
  descendant: SIGTERM first, SIGKILL after the grace period.
While the child runs it is also the watchdog for limits the kernel cannot
enforce for every user: the number of processes in the tree and the size of the
run dir. Past a limit it kills the tree and writes one JSON line saying which
limit to --verdict-fd, a pipe only the trainer reads (the child cannot forge it);
when the child exits it writes {"exited": code} there too, before sweeping the tree.
Resource limits (--rlimit) are set in the child before it starts. With
--max-tasks, the child also goes into a pids cgroup of its own capped at that
many tasks, where the machine lets us make one (root on cgroup v1, or a
delegated v2 subtree): the kernel then stops a fork bomb at once, even for root,
whom RLIMIT_NPROC does not bind.
With --remove PATH, it removes the folder PATH once the tree is gone, however it ends but by SIGKILL (also
when its parent was gone before it started): a folder of the spawner's that must not outlive the child, such
as the trusted evaluation's copy of the target (trainers/evaluate.py).
Its exit status is the child's (128 + signal number when the child was killed).

Standard library only, so it starts in a few milliseconds.
"""

import ctypes
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PARENT_ENV = "AR_REAPER_PARENT"  # a reaper's pid, handed to the second reaper it starts (--share-verdict)
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    _libc.prctl(option, arg, 0, 0, 0)


def descendants(root: int) -> list[int]:
    """All live descendants of `root`, found by walking /proc parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name sits in parentheses and may hold spaces: parse after the last ')'
        fields = stat[stat.rindex(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            out.append(pid)
            todo.append(pid)
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# Wait statuses of the children reaped by _reap_zombies: the training child may be among them (a limit kill reaps
# the whole tree before the reaper waits on it), and its status is the reaper's exit status.
_reaped: dict[int, int] = {}


def _reap_zombies() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _reaped[pid] = status


def wait_child(pid: int) -> int:
    """The exit code of our child `pid` (negative: killed by that signal), waiting for it unless already reaped."""
    while pid not in _reaped:
        try:
            got, status = os.waitpid(pid, 0)  # blocking; signal handlers run in between (PEP 475)
        except ChildProcessError:  # reaped elsewhere without a record: cannot happen, but never crash here
            return -signal.SIGKILL
        _reaped[got] = status
    return os.waitstatus_to_exitcode(_reaped.pop(pid))


def kill_tree(grace: float) -> None:
    """TERM every descendant, wait up to `grace` s for them to go, then KILL the rest and reap them."""
    me = os.getpid()
    _signal_all(descendants(me), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap_zombies()
        live = [p for p in descendants(me) if not _is_zombie(p)]
        if not live:
            return
        time.sleep(0.05)
    while True:
        live = [p for p in descendants(me) if not _is_zombie(p)]
        if not live:
            break
        _signal_all(live, signal.SIGKILL)
        time.sleep(0.02)
        _reap_zombies()
    _reap_zombies()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1] == b"Z"
    except OSError:
        return True


def disk_usage(root: str) -> int:
    """Bytes allocated under `root` (blocks, so sparse files count for what they really use)."""
    total, todo = 0, [root]
    while todo:
        try:
            with os.scandir(todo.pop()) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if e.is_dir(follow_symlinks=False):
                        todo.append(e.path)
        except OSError:
            continue
    return total


def over_limit(opts: dict, last_disk_check: list) -> str | None:
    """A sentence naming the limit the run broke, or None."""
    if opts["max_procs"]:
        n = sum(1 for p in descendants(os.getpid()) if not _is_zombie(p))
        if n > opts["max_procs"]:
            return f"process limit: {n} processes in the run's tree, more than the {opts['max_procs']} allowed"
    now = time.monotonic()
    if opts["quota_dir"] and now - last_disk_check[0] >= 1.0:
        last_disk_check[0] = now
        used = disk_usage(opts["quota_dir"])
        if used > opts["quota_bytes"]:
            return f"disk quota: the run dir holds {used / 2**20:.0f} MiB, more than the {opts['quota_bytes'] / 2**20:.0f} MiB allowed"
    return None


CGROUP_PREFIX = "ar-ray-tasks-"  # (versions before 2026-12-05 named theirs ar-ray-run-<pid> and cleared any other
# ar-ray-run-* whose /proc/<rest> was missing: a new name under their prefix would have been killed by them)


def _pids_roots() -> list[str]:
    """Where this process sits in a pids-controlled cgroup hierarchy (v1 first, then the v2 unified one)."""
    roots = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                hierarchy, controllers, path = line.rstrip("\n").split(":", 2)
                if "pids" in controllers.split(","):
                    roots.insert(0, "/sys/fs/cgroup/pids" + path)
                elif hierarchy == "0":
                    roots.append("/sys/fs/cgroup" + path)
    except (OSError, ValueError):
        pass
    return roots


def make_pids_cgroup(limit: int) -> str | None:
    """A cgroup of our own capped at `limit` tasks, or None where the machine does not let us make one."""
    for root in _pids_roots():
        clear_stale_cgroups(root)
        path = os.path.join(root, CGROUP_PREFIX + _identity(os.getpid()))
        try:
            os.mkdir(path)
        except OSError:
            continue
        try:
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(limit))
            return path
        except OSError:
            _remove_cgroup(path, tries=1)
    return None


def _identity(pid: int) -> str:
    """`<pid namespace>-<pid>-<start time>`: who owns a run's cgroup. A pid alone is not enough: runs in other pid
    namespaces (containers, `unshare --pid`) share the cgroup hierarchy with their own pids, and pids are reused."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]  # field 22, starttime (the name may hold spaces or ')')
    except (OSError, IndexError):
        return ""
    return f"{ns}-{pid}-{start}"


def _owner_gone(name: str) -> bool:
    """Whether the reaper named by a cgroup is gone. Only cgroups of this pid namespace are judged (another
    namespace's pids mean nothing here); a pid now held by a younger process counts as gone."""
    parts = name[len(CGROUP_PREFIX):].split("-")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return False  # not named by this version: leave it alone
    own = _identity(os.getpid())
    if not own or parts[0] != own.split("-")[0]:
        return False
    return _identity(int(parts[1])) != name[len(CGROUP_PREFIX):]


def clear_stale_cgroups(root: str) -> list[str]:
    """Remove the cgroups of reapers that died without cleaning up (SIGKILLed), killing what is left in them:
    those processes are orphans of a killed run. Returns the cgroups removed."""
    removed = []
    for stale in (os.listdir(root) if os.path.isdir(root) else []):
        if stale.startswith(CGROUP_PREFIX) and _owner_gone(stale):
            path = os.path.join(root, stale)
            _kill_members(path)
            _remove_cgroup(path, tries=25)
            removed += [] if os.path.exists(path) else [path]
    return removed


def _kill_members(path: str) -> None:
    try:  # cgroup v2 (Linux 5.14+): the kernel kills every member at once
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
        return
    except OSError:
        pass
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            pids = [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _remove_cgroup(path: str, tries: int = 50) -> None:
    for _ in range(tries):  # the tasks of a killed tree leave the cgroup a moment after they die
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


def parse_args(argv: list[str]) -> tuple[dict, list[str]]:
    opts = {"grace": 5.0, "max_procs": 0, "quota_dir": None, "quota_bytes": 0, "rlimits": {}, "verdict_fd": None,
            "max_tasks": 0, "share_verdict": False, "parent": None, "remove": None}
    while argv and argv[0] != "--":
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--grace":
            opts["grace"] = float(value)
        elif flag == "--max-procs":
            opts["max_procs"] = int(value)
        elif flag == "--quota-dir":
            opts["quota_dir"] = value
        elif flag == "--quota-bytes":
            opts["quota_bytes"] = int(value)
        elif flag == "--rlimit":
            name, limit = value.split("=")
            opts["rlimits"][name] = int(limit)
        elif flag == "--verdict-fd":
            opts["verdict_fd"] = int(value)
        elif flag == "--max-tasks":
            opts["max_tasks"] = int(value)
        elif flag == "--parent":  # the spawner's pid: a spawner that died before we armed the death signal is seen
            opts["parent"] = int(value)
        elif flag == "--remove":
            opts["remove"] = value
        elif flag == "--share-verdict":  # the command is a second reaper (trainers/trainer.py): it reports there too
            opts["share_verdict"] = value == "1"
        else:
            raise SystemExit(f"reaper.py: unknown flag {flag}")
    return opts, argv[1:]


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: reaper.py [--grace S] [--max-procs N] [--max-tasks N] [--quota-dir D --quota-bytes B] "
              "[--rlimit NAME=V]... [--verdict-fd FD] -- COMMAND...", file=sys.stderr)
        return 2
    opts, argv = parse_args(argv)
    grace = opts["grace"]
    if not argv:
        print("reaper.py: no command after --", file=sys.stderr)
        return 2
    # (getppid alone misses a spawner that died before this line. A second reaper learns its spawner, the first
    # reaper, from PARENT_ENV: the trainer cannot know that pid when it writes the command. Popped, so the run's own
    # environment stays what the trainer gave it.)
    handed = os.environ.pop(PARENT_ENV, None)
    parent = opts["parent"] or (int(handed) if handed and handed.isdigit() else None) or os.getppid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        _remove_folder(opts["remove"])
        return 128 + signal.SIGTERM

    def on_stop(signum, _frame):
        # TERM the whole tree now; the alarm escalates to KILL after the grace period.
        _signal_all(descendants(os.getpid()), signal.SIGTERM)
        signal.setitimer(signal.ITIMER_REAL, grace)

    def on_alarm(_signum, _frame):
        _signal_all(descendants(os.getpid()), signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGALRM, on_alarm)

    me = os.getpid()

    def child_setup():
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != me:  # the reaper died before the death signal was armed: never run unsupervised
            os._exit(128 + signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for name, limit in opts["rlimits"].items():
            resource.setrlimit(getattr(resource, "RLIMIT_" + name.upper()), (limit, limit))
        if cgroup:
            try:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            except OSError:
                pass  # the watchdog still counts processes

    verdict_fd = opts.pop("verdict_fd")
    cgroup = make_pids_cgroup(opts["max_tasks"]) if opts["max_tasks"] else None
    try:
        return _supervise(argv, child_setup, opts, verdict_fd, grace, cgroup)
    finally:
        if cgroup:
            _remove_cgroup(cgroup)
        _remove_folder(opts["remove"])


def _remove_folder(path: str | None) -> None:
    """--remove: the tree is gone, so nothing writes there any more."""
    if path:
        import shutil  # (only here: the reaper starts in a few milliseconds)
        shutil.rmtree(path, ignore_errors=True)


def _refused_forks(cgroup: str | None) -> int:
    """Forks the kernel refused at the cgroup's cap (pids.events: `max N`)."""
    try:
        with open(os.path.join(cgroup, "pids.events")) as f:
            return sum(int(line.split()[1]) for line in f if line.startswith("max "))
    except (OSError, TypeError, ValueError, IndexError):
        return 0


def _tell(verdict_fd: int | None, record: dict) -> None:
    if verdict_fd is not None:
        os.write(verdict_fd, (json.dumps(record) + "\n").encode())


def _report(broken: str, verdict_fd: int | None) -> None:
    print(f"ar-ray: stopped the run: {broken}", flush=True)
    _tell(verdict_fd, {"limit": broken})


def _supervise(argv, child_setup, opts, verdict_fd, grace, cgroup) -> int:
    try:
        shared = (verdict_fd,) if opts["share_verdict"] and verdict_fd is not None else ()
        env = {**os.environ, PARENT_ENV: str(os.getpid())} if shared else None  # the second reaper's spawner: us
        child = subprocess.Popen(argv, preexec_fn=child_setup, start_new_session=True, pass_fds=shared, env=env)
    except OSError as e:
        print(f"ar-ray: cannot start {argv[0]!r}: {e.strerror}", flush=True)
        return 127
    broken = watch(child.pid, opts)
    if broken:
        _report(broken, verdict_fd)
        signal.setitimer(signal.ITIMER_REAL, 0)
        kill_tree(0.0)  # no grace for a run that broke a limit: a fork bomb must not get time to grow
    child.returncode = wait_child(child.pid)  # (set: keeps Popen from waiting on it again)
    # The run itself is over: the trainer counts a hard timeout that strikes during the sweep below (up to the
    # grace period, for leftovers that ignore SIGTERM) against the sweep, not against the run.
    _tell(verdict_fd, {"exited": child.returncode})
    signal.setitimer(signal.ITIMER_REAL, 0)
    kill_tree(grace)
    refused = _refused_forks(cgroup)
    if refused and not broken:
        _report(f"process limit: the kernel refused {refused} forks at the run's cap of {opts['max_tasks']} tasks",
                verdict_fd)
    code = child.returncode
    return code if code >= 0 else 128 - code


def watch(pid: int, opts: dict, interval: float = 0.2) -> str | None:
    """Wait for the child to exit, checking the limits every `interval` s. Returns the broken limit, if any.
    Each check walks /proc (about 1 ms per 100 processes on the node) and the run dir once a second."""
    if not (opts["max_procs"] or opts["quota_dir"]):
        return None
    fd = os.pidfd_open(pid)
    last_disk_check = [0.0]
    try:
        while not select.select([fd], [], [], interval)[0]:
            broken = over_limit(opts, last_disk_check)
            if broken:
                return broken
    finally:
        os.close(fd)
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

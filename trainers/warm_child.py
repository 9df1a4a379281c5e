"""A pre-started training child: imports the harness ahead of the candidate, then runs the target's command.

    python warm_child.py MODULE...        (cwd: the run dir; started by trainers/prestart.py)

It runs where the candidate's run will run (the same sandbox, run dir, limits and environment, less the
run's own values), imports the modules the target lists under `prestart` (its harness: never a candidate's
file, the candidate is not known yet), then blocks on its standard input. The trainer writes one JSON line
{"argv": [...], "env": {...}}: the run's command, `python SCRIPT ARGS...` or `python -m MODULE ARGS...`,
and its whole environment, then closes the pipe. The child takes that environment, and runs the command
in this interpreter as `python` would have (sys.argv, sys.path[0], `__main__`); the run's clock starts
there. End of input without a line: the child was discarded, it exits at once.

Before the command it checks that the imports left nothing a cold run would not have: no import failed
and no accelerator was initialized (the previous run may still hold it). Otherwise it replaces itself
with the plain command (exec: a cold start in the same sandbox), saying why in the log.

At the end it does what the interpreter's own exit does that a run can observe (wait for non-daemon
threads, run atexit handlers, flush Python's and C's output buffers) and skips the rest (freeing every
module and object: ~1 s with torch loaded) with os._exit. The harness's result file and the metric line
are written and closed by then.

Standard library only: it starts inside the sandbox, where only the run's own packages are importable.
"""

import atexit
import builtins
import ctypes
import importlib
import importlib.machinery
import io
import json
import os
import runpy
import signal
import sys
import threading
import time
import traceback
import types

# While the harness is imported, a CUDA availability check asks NVML instead of initializing the driver:
# the previous run may still be training on the accelerator (torch reads this at each check).
QUIET_CUDA = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1"}


def preimport(modules: list[str]) -> tuple[float, str | None]:
    """Import the modules; (seconds taken, why this child is not fit to run the candidate, or None)."""
    t0 = time.monotonic()
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as e:  # (a module calling sys.exit too)
            return time.monotonic() - t0, f"importing {name} failed: {type(e).__name__}: {e}"
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            return time.monotonic() - t0, f"importing {', '.join(modules)} initialized CUDA"
    except Exception:
        pass
    return time.monotonic() - t0, None


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def _user_traceback(e: BaseException):
    """The exception's traceback without this runner's and runpy's frames (what `python script.py` prints)."""
    tb = e.__traceback__
    skip = (os.path.abspath(__file__), runpy.__file__)
    while tb is not None and tb.tb_frame.f_code.co_filename in skip:
        tb = tb.tb_next
    return tb or e.__traceback__


def run_script(argv: list[str]) -> None:
    """`python SCRIPT ARGS...`: sys.argv as given, sys.path[0] the script's folder, a fresh `__main__` whose
    __file__ is the script's absolute path (as python 3.9+ sets it)."""
    script = os.path.abspath(argv[0])
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(script)
    with io.open_code(script) as f:
        code = compile(f.read(), script, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=script, __cached__=None, __package__=None, __spec__=None, __builtins__=builtins,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", script))
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def run(argv: list[str]) -> int:
    """Run `python ARGS` (argv without the interpreter) in this process; its exit code."""
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]  # (runpy puts the module's file in sys.argv[0])
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            run_script(argv)
        return 0
    except SystemExit as e:
        return _exit_code(e)
    except KeyboardInterrupt:
        traceback.print_exc()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as python does: die of SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException as e:
        tb = _user_traceback(e)
        sys.excepthook(type(e), e.with_traceback(tb), tb)  # (the hook prints the exception's own traceback)
        return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        ctypes.CDLL(None).fflush(None)  # what C extensions printed through stdio
    except Exception:
        pass


def finish(code: int) -> None:
    """Exit as the interpreter would, less freeing every object: non-daemon threads joined, atexit run,
    buffers flushed."""
    try:
        threading._shutdown()
    except Exception:
        pass
    try:
        atexit._run_exitfuncs()
    except Exception:
        pass
    _flush()
    os._exit(code)


def main(modules: list[str]) -> None:
    sys.path[0] = os.getcwd()  # the run dir, as for `python SCRIPT` (not this file's folder)
    os.environ.update(QUIET_CUDA)  # (the run's own environment replaces all of it below)
    seconds, unfit = preimport(modules)
    line = sys.stdin.readline()
    if not line.strip():
        os._exit(0)  # discarded before a run: nothing of a candidate ran here
    go = json.loads(line)
    os.environ.clear()
    os.environ.update(go["env"])
    argv = go["argv"]
    if unfit:
        print(f"ar-ray: pre-started child not used ({unfit}); starting the run cold", file=sys.stderr, flush=True)
        os.execve(argv[0], argv, go["env"])
    print(f"ar-ray: pre-started child: {', '.join(modules)} imported in {seconds:.1f} s", file=sys.stderr, flush=True)
    finish(run(argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])

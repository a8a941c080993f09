"""Multi-process runs of `unizoo fit|validate|test|predict` on one node (`--trainer.devices N`, DDP and kin).

Lightning's subprocess launcher starts ranks 1..N-1 by re-running the command line (`sys.argv`, or
`python -m <__main__'s module>`). Under `unizoo` that re-run is wrong in two ways: `run_lightning_cli`
hands its arguments to LightningCLI directly (sys.argv holds only the program), and an in-process caller
(`unizoo quickstart`, a notebook, pytest) would re-run *its own* program. So while a Lightning command runs,
`same_command_for_children` makes every child run exactly this command (`python -m tools.cli COMMAND ARGS`)
and replaces Lightning's child observer by `ChildWatcher`, which stops this process with a clear error when a
child exits before the process group is up (Lightning's own observer ignores a child that exits with status
0, and rank 0 then waits for it forever) or exits non-zero at any time.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence

# Seconds rank 0 waits for every child to join the process group before giving up (model loading counts).
JOIN_TIMEOUT_ENV = "UNIZOO_DIST_JOIN_TIMEOUT"
DEFAULT_JOIN_TIMEOUT = 1200.0


def child_command(argv: Sequence[str]) -> list[str]:
    """The command line a child rank runs: this interpreter, the unizoo CLI module, the same arguments."""
    return [sys.executable, "-m", "tools.cli", *argv]


def _process_group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


class ChildWatcher(threading.Thread):
    """Watch the child ranks of this (rank 0) process; on a failure print one clear error and exit.

    A failure is a child that exits before the process group is up (whatever its status: it never joined)
    or one that exits with a non-zero status later, or no process group after `join_timeout` seconds. The
    other children are killed and this process ends with status 1 (`os._exit`: rank 0 is blocked inside
    the process-group rendezvous or a collective, where no exception can reach it).
    """

    def __init__(self, procs: list[subprocess.Popen], command: str, join_timeout: float | None = None,
                 poll_s: float = 0.5, exit_fn=os._exit) -> None:
        super().__init__(daemon=True, name="unizoo-child-watcher")
        self.procs, self.command, self.poll_s, self._exit = procs, command, poll_s, exit_fn
        if join_timeout is None:
            join_timeout = float(os.environ.get(JOIN_TIMEOUT_ENV, DEFAULT_JOIN_TIMEOUT))
        self.join_timeout = join_timeout
        self.stopped = threading.Event()
        self.failure: str | None = None

    def check(self, elapsed: float, ready: bool) -> str | None:
        """The failure message, if any, for the children's state now (`ready`: the process group is up)."""
        for rank, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code is None or (code == 0 and ready):
                continue
            when = "after joining the process group" if ready else "before joining the process group"
            return (f"unizoo {self.command}: error: rank {rank} (pid {proc.pid}, `{' '.join(map(str, proc.args))}`) "
                    f"exited with status {code} {when}; its output is above. Stopping all ranks.")
        if not ready and elapsed > self.join_timeout:
            return (f"unizoo {self.command}: error: the child ranks did not join the process group within "
                    f"{self.join_timeout:.0f} s ({JOIN_TIMEOUT_ENV} sets the limit). Stopping all ranks.")
        return None

    def run(self) -> None:  # noqa: D102
        start = time.monotonic()
        while not self.stopped.wait(self.poll_s):
            ready = _process_group_ready()
            self.failure = self.check(time.monotonic() - start, ready)
            if self.failure is not None:
                self._fail()
                return
            if all(p.poll() == 0 for p in self.procs):
                return

    def _fail(self) -> None:
        print(self.failure, file=sys.stderr, flush=True)
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGKILL)
        self._exit(1)


@contextlib.contextmanager
def same_command_for_children(argv: Sequence[str]) -> Iterator[list[ChildWatcher]]:
    """While active, Lightning's subprocess launcher starts children with `child_command(argv)` and watches
    them with `ChildWatcher`. Yields the list of watchers started (one per launch)."""
    from lightning.pytorch.strategies.launchers import subprocess_script as launcher

    argv = list(argv)
    watchers: list[ChildWatcher] = []

    def watch(procs: list[subprocess.Popen]) -> None:
        watcher = ChildWatcher(procs, argv[0] if argv else "")
        watchers.append(watcher)
        watcher.start()

    saved = launcher._basic_subprocess_cmd, launcher._launch_process_observer
    launcher._basic_subprocess_cmd = lambda: child_command(argv)
    launcher._launch_process_observer = watch
    try:
        yield watchers
    finally:
        launcher._basic_subprocess_cmd, launcher._launch_process_observer = saved
        for watcher in watchers:
            watcher.stopped.set()

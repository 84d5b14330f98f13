"""Shared by the benchmark scripts (scripts/bench-*.sh import it): starting
splitvm with the time of its execve(), and the host's load."""
import os
import time


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def launch(argv, stderr_path=None, sched_fifo=False):
    """fork; the child reads CLOCK_MONOTONIC right before execve(argv).
    stdin/stdout go to /dev/null, stderr too unless `stderr_path` is given.
    Returns (pid, t_exec_ns)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            err = devnull
            if stderr_path:
                err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(err, 2)
            if sched_fifo:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            t = time.monotonic_ns()
            os.write(w, str(t).encode())
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(w)
    data = b""
    while chunk := os.read(r, 64):
        data += chunk
    os.close(r)
    return pid, int(data)


def waitstatus(pid):
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st)

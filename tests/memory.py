"""The peak memory of this process, for tests that compare two child processes.

`resource.getrusage(RUSAGE_SELF).ru_maxrss` does not give it: Linux carries the high-water
mark over fork and exec, so a child of a large pytest process reports the parent's peak and
two children compare equal whatever they did. VmHWM is the peak of the process's own
address space since its exec."""


def peak_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

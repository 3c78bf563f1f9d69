"""timed.py - the runner behind run.sh: runs Sorter's integration tests like
`python3 -m unittest -v`, then prints where the time went (the seconds of each module and the
slowest tests; Python 3.11's unittest has no --durations).

usage (from tests/integration, SORTER_BUILD set):
  python3 timed.py [-j JOBS] [--slowest N] [names...]

Without names every test_*.py module runs; with -j JOBS > 1 the modules run in JOBS processes
side by side (each module whole in one process, taken as processes free up: the longest
modules first, LONGEST, then the others in name order), and each module's output is printed
whole, in name order, once it and every module before it has finished. Tests share nothing across modules: every daemon, peer and port is
private to its test (free ports, own temp dirs). With names, they run in this process.
--slowest N (or SORTER_IT_SLOWEST=N in the environment): how many slowest tests to list
(15). Exit status 0 when every test passed.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest


# the modules that take longest (a minute each, measured), started first with -j so that
# the processes finish together; only the order in which modules start depends on it
LONGEST = ("test_ops", "test_milter", "test_chunking", "test_hostile", "test_delivery")


class TimedResult(unittest.TextTestResult):
    """A verbose result that also records each test's wall time (setUp and cleanups
    included; setUpClass and tearDownClass are outside every test)."""

    durations = []

    def startTest(self, test):
        self._started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        TimedResult.durations.append((time.monotonic() - self._started, test.id()))


def report(durations, wall, slowest, out):
    """Seconds per module (sum of its tests) and the slowest tests, to out."""
    if not durations:
        return
    modules = {}
    for secs, name in durations:
        mod = name.split(".", 1)[0]
        modules[mod] = modules.get(mod, 0.0) + secs
    out.write("\n---- seconds per module (its tests; class setups excluded) ----\n")
    for mod, secs in sorted(modules.items(), key=lambda kv: -kv[1]):
        out.write("%8.1f  %s\n" % (secs, mod))
    out.write("%8.1f  all tests\n%8.1f  wall clock\n" % (sum(modules.values()), wall))
    out.write("---- the %d slowest tests ----\n" % min(slowest, len(durations)))
    for secs, name in sorted(durations, reverse=True)[:slowest]:
        out.write("%8.1f  %s\n" % (secs, name))
    out.flush()


def run_here(names, durations_file):
    """Runs names (all modules when empty) in this process; True when all passed."""
    loader = unittest.TestLoader()
    suite = loader.loadTestsFromNames(names) if names else loader.discover(".", "test_*.py")
    result = unittest.TextTestRunner(verbosity=2, resultclass=TimedResult).run(suite)
    if durations_file:
        with open(durations_file, "w") as f:
            json.dump({"durations": TimedResult.durations, "run": result.testsRun,
                       "ok": result.wasSuccessful()}, f)
    return result.wasSuccessful()


def run_parallel(jobs, out):
    """Every test_*.py module in its own child process, jobs at a time; the outputs in
    module order. Returns (durations, tests run, failed modules)."""
    modules = sorted(f[:-3] for f in os.listdir(".") if f.startswith("test_")
                     and f.endswith(".py"))
    tmp = tempfile.mkdtemp(prefix="sorter-it-run-")
    pending = ([m for m in LONGEST if m in modules] +
               [m for m in modules if m not in LONGEST])
    running = {}                # module -> (Popen, log file)
    done = {}                   # module -> exit status
    printed = 0
    durations, tests_run, failed = [], 0, []
    while printed < len(modules):
        while pending and len(running) < jobs:
            mod = pending.pop(0)
            log = open(os.path.join(tmp, mod + ".log"), "wb")
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--durations",
                                  os.path.join(tmp, mod + ".json"), mod],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            running[mod] = (p, log)
        for mod, (p, log) in list(running.items()):
            if p.poll() is not None:
                log.close()
                done[mod] = p.returncode
                del running[mod]
        while printed < len(modules) and modules[printed] in done:
            mod = modules[printed]
            out.write("\n==== %s ====\n" % mod)
            with open(os.path.join(tmp, mod + ".log"), "rb") as f:
                out.write(f.read().decode("utf-8", "replace"))
            try:
                with open(os.path.join(tmp, mod + ".json")) as f:
                    res = json.load(f)
                durations += [tuple(d) for d in res["durations"]]
                tests_run += res["run"]
            except (OSError, ValueError):
                res = {"ok": False}
            if done[mod] != 0 or not res["ok"]:
                failed.append(mod)
            out.flush()
            printed += 1
        time.sleep(0.1)
    for mod in modules:
        for ext in (".log", ".json"):
            try:
                os.unlink(os.path.join(tmp, mod + ext))
            except FileNotFoundError:
                pass
    os.rmdir(tmp)
    return durations, tests_run, len(modules), failed


def main(argv):
    slowest = int(os.environ.get("SORTER_IT_SLOWEST", "15"))
    jobs, durations_file = 1, None
    while argv and argv[0].startswith("-"):
        opt = argv.pop(0)
        if opt == "--slowest":
            slowest = int(argv.pop(0))
        elif opt == "-j":
            jobs = int(argv.pop(0))
        elif opt == "--durations":     # internal: a child of run_parallel
            durations_file = argv.pop(0)
        else:
            sys.stderr.write("timed.py: unknown option %s\n" % opt)
            return 2
    t0 = time.monotonic()
    if durations_file:
        return 0 if run_here(argv, durations_file) else 1
    if argv or jobs <= 1:
        ok = run_here(argv, None)
        report(TimedResult.durations, time.monotonic() - t0, slowest, sys.stderr)
        return 0 if ok else 1
    durations, tests_run, nmodules, failed = run_parallel(jobs, sys.stdout)
    wall = time.monotonic() - t0
    sys.stdout.write("\n" + "=" * 70 + "\nRan %d tests in %d modules, %d processes side by "
                     "side, in %.1fs\n" % (tests_run, nmodules, jobs, wall))
    sys.stdout.write("FAILED: %s\n" % " ".join(failed) if failed else "OK\n")
    sys.stdout.flush()
    report(durations, wall, slowest, sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

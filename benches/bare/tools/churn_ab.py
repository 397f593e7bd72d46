"""Churn A/B: several echo servers side by side, alternating rounds.

    churn_ab.py NAME=CMD [NAME=CMD ...]

Each CMD is a command line (split like a shell's words) that starts a
server listening on 127.0.0.1 port 0 and prints its `tcp://ADDR`. Every
round starts each server in turn, runs `loadtest --churn` against it
(CLIENTS connections, SECS seconds), and ends it by its pid with
SIGTERM. Prints per round conn/s,
then per server the median conn/s, its ratio to the first server, the
server's CPU per connection (the server and the children it reaped, from
/proc) and the whole machine's busy CPU per connection (which includes
children nobody waits for, as a bare fork server's). ROUNDS (default 9),
SECS (2), CLIENTS (4) from the environment.
"""
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

from common import WT, start

LOADTEST = os.path.join(WT, "target/release/loadtest")


def machine_busy():
    """Busy clock ticks of the whole machine (all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]


def tree_ticks(pid):
    """utime + stime of `pid` and of the children it has reaped."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2:].split()
    return sum(int(x) for x in fields[11:15])


def main():
    servers = [a.split("=", 1) for a in sys.argv[1:]]
    if not servers or any(len(s) != 2 for s in servers):
        raise SystemExit(__doc__)
    rounds = int(os.environ.get("ROUNDS", "9"))
    secs = os.environ.get("SECS", "2")
    clients = os.environ.get("CLIENTS", "4")
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    rate = {n: [] for n, _ in servers}
    cpu = {n: [] for n, _ in servers}
    busy = {n: [] for n, _ in servers}
    for r in range(rounds):
        for name, cmd in servers:
            p, addr = start(shlex.split(cmd))
            try:
                time.sleep(0.2)
                t0, b0 = tree_ticks(p.pid), machine_busy()
                out = subprocess.run([LOADTEST, addr, "--json", "--churn", "-c", clients,
                                      "-d", secs + "s"], capture_output=True, text=True).stdout
                t1, b1 = tree_ticks(p.pid), machine_busy()
            finally:
                p.terminate()
                p.wait()
            conns = json.loads(out)["connections_opened"]
            rate[name].append(conns / float(secs))
            cpu[name].append((t1 - t0) * tick_us / conns)
            busy[name].append((b1 - b0) * tick_us / conns)
        print(f"round {r}: " + "  ".join(f"{n}={rate[n][-1]:.0f}" for n, _ in servers), flush=True)
    base = statistics.median(rate[servers[0][0]])
    for name, _ in servers:
        m = statistics.median(rate[name])
        print(f"{name:12} median {m:8.0f} conn/s  ratio {m / base:.3f}  "
              f"range {min(rate[name]):.0f}-{max(rate[name]):.0f}  "
              f"server {statistics.median(cpu[name]):.0f} us/conn  "
              f"machine {statistics.median(busy[name]):.0f} us/conn")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""RSS per idle connection of one or more echo servers, alternating rounds.

Usage (from the crate root, after the builds in README.md):

    python3 benches/bare/tools/idle_rss.py N ROUNDS 'CMD' ['CMD' ...]

Each CMD is a server command line that listens on 127.0.0.1 port 0 and
prints its `tcp://ADDR`, for example
`target/release/examples/echo --mode async --listen 127.0.0.1:0` or
`/tmp/bare-echo-ts epoll 2`. Per round and server: start it, warm it
with 200 short connections, read its RSS, open N connections that each
echo 64 bytes once and then stay open and idle, read the RSS again, and
print (after - before) / N. The client is this script (plain blocking
sockets), so only the server's memory is measured. Servers are ended by
their pid with SIGTERM.
"""
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("Rss:"))


def one(n, cmd):
    p = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    try:
        while True:
            line = p.stdout.readline()
            if not line:
                raise SystemExit(f"{cmd}: exited before it listened")
            m = re.search(r"tcp://([0-9.]+):([0-9]+)", line)
            if m:
                addr = (m.group(1), int(m.group(2)))
                break
        for _ in range(200):
            with socket.create_connection(addr) as s:
                s.sendall(b"x" * 64)
                s.recv(64)
        time.sleep(0.3)
        before = rss_kib(p.pid)
        socks = []
        try:
            for _ in range(n):
                s = socket.create_connection(addr)
                s.sendall(b"y" * 64)
                socks.append(s)
            for s in socks:
                got = 0
                while got < 64:
                    chunk = s.recv(64 - got)
                    if not chunk:
                        raise SystemExit(f"{cmd}: a connection closed early")
                    got += len(chunk)
            time.sleep(0.5)
            after = rss_kib(p.pid)
        finally:
            for s in socks:
                s.close()
        return (after - before) * 1024 / n
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    n, rounds, cmds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    got = {c: [] for c in cmds}
    for r in range(rounds):
        for c in cmds:
            # `exec`: the pid is the server's, not a shell's.
            got[c].append(one(n, "exec " + c))
        print(f"round {r}: " + "  ".join(f"{v[-1]:.0f} B" for v in got.values()), flush=True)
    for c, v in got.items():
        print(f"{statistics.median(v):7.0f} B per idle connection (median)  {c}")


if __name__ == "__main__":
    main()

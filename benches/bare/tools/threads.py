#!/usr/bin/env python3
"""Sample the server's thread count every 50 ms during a loadtest run."""
import os, signal, subprocess, sys, time, json
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import WT, start, servers  # noqa: E402
def stat(pid):
    th = 0; cpu = 0
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("Threads:"): th = int(l.split()[1])
    s = open(f"/proc/{pid}/stat").read(); f = s[s.rfind(")")+2:].split()
    return th, (int(f[11]) + int(f[12]))
n = sys.argv[1]; secs = sys.argv[2]; warm = sys.argv[3]
cmds = servers()
for k, cmd in list(cmds.items()) * int(os.environ.get("ROUNDS", "1")):
    p, addr = start(cmd)
    lt = subprocess.Popen([WT+"/target/release/loadtest", addr, "--json", "-c", n, "-d", secs+"s", "--warmup", warm+"s"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    t0 = time.monotonic(); samples = []
    while lt.poll() is None:
        samples.append((time.monotonic()-t0, *stat(p.pid))); time.sleep(0.05)
    v = json.loads(lt.stdout.read())
    marks = []
    for want in (1000, 2500, 4000, int(n)):
        t = next((s[0] for s in samples if s[1] >= want), None)
        marks.append(f"{want}thr@{t*1000:.0f}ms" if t is not None else f"{want}thr@never")
    print(f"{k:10}", " ".join(marks), f"rps={v['rps']:.0f} p99={v['latency_us']['p99']/1000:.0f}ms cpu_ticks={samples[-1][2]}", flush=True)
    p.send_signal(signal.SIGTERM); p.wait()

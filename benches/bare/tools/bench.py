#!/usr/bin/env python3
# Usage (from the crate root): ECHO=path/to/echo[,path/to/other-echo] python3 benches/bare/tools/bench.py 10,100,1000,5000 ROUNDS SECS [WARMUP_SECS]
"""Alternating rounds ours vs bare thread, like benches/bare.rs scaling_rows."""
import json, os, signal, subprocess, sys, threading, time, statistics
WT = os.environ.get("WT", os.getcwd())  # the crate root
ECHO = os.environ.get("ECHO", WT + "/target/release/examples/echo")
LT = WT + "/target/release/loadtest"
BARE = os.environ.get("BARE", "/tmp/bare-echo-ts")  # cc -O2 -pthread -o $BARE benches/bare/bare.c
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return float(l.split()[1])
    return 0.0
def start(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = p.stdout.readline()
        if not line: raise SystemExit("server exited")
        if "tcp://" in line:
            addr = line.split("tcp://")[1].split()[0]; break
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, addr
def stop(p):
    p.send_signal(signal.SIGTERM)
    try: p.wait(10)
    except subprocess.TimeoutExpired: p.kill(); p.wait()
def run(cmd, n, secs, warm):
    p, addr = start(cmd)
    idle = rss(p.pid)
    box = {}
    def samp():
        time.sleep(((warm or 0) + secs) * 0.5 if False else (warm + secs*0.5))
        try: box["r"] = rss(p.pid)
        except Exception: box["r"] = 0
    t = threading.Thread(target=samp); t.start()
    args = [LT, addr, "--json", "-d", f"{secs}s", "-c", str(n)]
    if warm: args += ["--warmup", f"{warm}s"]
    out = subprocess.run(args, capture_output=True, text=True).stdout
    t.join()
    stop(p)
    v = json.loads(out)
    return v["rps"], v["latency_us"]["p99"], max(box["r"] - idle, 0) / n, v["errors"]["total"], v
ns = [int(x) for x in sys.argv[1].split(",")]
rounds = int(sys.argv[2]); secs = int(sys.argv[3]); warm = float(sys.argv[4]) if len(sys.argv) > 4 else 0
ours_extra = os.environ.get("OURS_EXTRA", "").split()
for n in ns:
    servers = [(os.path.basename(e), [e, "--mode", "threading", "--listen", "127.0.0.1:0"] + ours_extra) for e in ECHO.split(",")] + [("bare", [BARE, "thread"])]
    m = {k: [] for k, _ in servers}
    for r in range(rounds):
        for k, cmd in servers:
            res = run(cmd, n, secs, warm)
            m[k].append(res[:4])
            print(f"  n={n} {k} r{r}: rps={res[0]:.0f} p99={res[1]:.0f}us rss/conn={res[2]:.1f}KiB err={res[3]}", flush=True)
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in m.items()}
    b = med["bare"]
    for k, o in med.items():
      if k == "bare": continue
      print(f"N={n} warm={warm} {k}: thr {o[0]:.0f}/{b[0]:.0f}={o[0]/b[0]:.2f}  p99 {o[1]:.0f}/{b[1]:.0f} ratio(bare/ours)={b[1]/o[1]:.2f}  rss/conn {o[2]:.1f}/{b[2]:.1f} ratio={b[2]/o[2] if o[2] else 1:.2f}", flush=True)

import json, os, signal, subprocess, sys
WT = os.environ.get("WT", os.getcwd())  # the crate root
def start(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = p.stdout.readline()
        if "tcp://" in line: return p, line.split("tcp://")[1].split()[0]
cmds = {os.path.basename(e): [e, "--mode", "threading", "--listen", "127.0.0.1:0"] for e in os.environ["ECHO"].split(",")}
cmds["bare"] = [os.environ.get("BARE", "/tmp/bare-echo-ts"), "thread"]
for r in range(int(sys.argv[2])):
  for k, cmd in cmds.items():
    p, addr = start(cmd)
    v = json.loads(subprocess.run([WT+"/target/release/loadtest", addr, "--json", "-c", sys.argv[1], "-d", "3s"], capture_output=True, text=True).stdout)
    print(f"{k:10} p99 {v['latency_us']['p99']/1000:.0f}ms max {v['latency_us']['max']/1000:.0f}ms |", " | ".join(f"s{t['second']}: n={t['requests']} p50={t['p50_us']/1000:.0f} p99={t['p99_us']/1000:.0f} max={t['max_us']/1000:.0f}" for t in v['timeline']), flush=True)
    p.send_signal(signal.SIGTERM); p.wait()

import json, os, signal, subprocess, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import WT, start, servers  # noqa: E402
cmds = servers()
for r in range(int(sys.argv[2])):
  for k, cmd in cmds.items():
    p, addr = start(cmd)
    v = json.loads(subprocess.run([WT+"/target/release/loadtest", addr, "--json", "-c", sys.argv[1], "-d", "3s"], capture_output=True, text=True).stdout)
    print(f"{k:10} p99 {v['latency_us']['p99']/1000:.0f}ms max {v['latency_us']['max']/1000:.0f}ms |", " | ".join(f"s{t['second']}: n={t['requests']} p50={t['p50_us']/1000:.0f} p99={t['p99_us']/1000:.0f} max={t['max_us']/1000:.0f}" for t in v['timeline']), flush=True)
    p.send_signal(signal.SIGTERM); p.wait()

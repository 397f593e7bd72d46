import os, signal, subprocess, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import WT, start, servers  # noqa: E402
def ticks(path):
    s = open(path).read(); f = s[s.rfind(")")+2:].split(); return int(f[11]) + int(f[12])
cmds = servers()
for r in range(int(sys.argv[2])):
  for k, cmd in cmds.items():
    p, addr = start(cmd)
    subprocess.run([WT+"/target/release/loadtest", addr, "--json", "-c", sys.argv[1], "-d", "2s"], capture_output=True)
    ss = open(f'/proc/{p.pid}/task/{p.pid}/schedstat').read().split()
    st = open(f'/proc/{p.pid}/task/{p.pid}/status').read()
    vol = [l.split()[1] for l in st.splitlines() if 'ctxt_switches' in l]
    print(f"{k:10} main: run {int(ss[0])/1e6:.0f} ms, runqueue-wait {int(ss[1])/1e6:.0f} ms, slices {ss[2]}, ctxt vol/invol {vol}", end="; ")
    print(f"{k:10} main-thread cpu {ticks(f'/proc/{p.pid}/task/{p.pid}/stat')*10} ms, process cpu {ticks(f'/proc/{p.pid}/stat')*10} ms", flush=True)
    p.send_signal(signal.SIGTERM); p.wait()

import os, signal, subprocess, sys, time
WT = os.environ.get("WT", os.getcwd())  # the crate root
def start(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = p.stdout.readline()
        if "tcp://" in line: return p, line.split("tcp://")[1].split()[0]
def ticks(path):
    s = open(path).read(); f = s[s.rfind(")")+2:].split(); return int(f[11]) + int(f[12])
cmds = {os.path.basename(e): [e, "--mode", "threading", "--listen", "127.0.0.1:0"] for e in os.environ["ECHO"].split(",")}
cmds["bare"] = [os.environ.get("BARE", "/tmp/bare-echo-ts"), "thread"]
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

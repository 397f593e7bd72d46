"""What the threading tools share: starting a server, the servers compared."""
import os
import subprocess

WT = os.environ.get("WT", os.getcwd())  # the crate root


def start(cmd):
    """Starts a server (listening on 127.0.0.1 port 0); returns the process
    and the address from its `listening on tcp://ADDR` line."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"{cmd[0]} exited before it listened")
        if "tcp://" in line:
            return p, line.split("tcp://")[1].split()[0]


def servers():
    """Ours (`ECHO=a[,b]`, threading mode) and bare `thread` (`BARE`)."""
    cmds = {os.path.basename(e): [e, "--mode", "threading", "--listen", "127.0.0.1:0"]
            for e in os.environ["ECHO"].split(",")}
    cmds["bare"] = [os.environ.get("BARE", "/tmp/bare-echo-ts"), "thread"]
    return cmds

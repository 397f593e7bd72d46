# CPU cost of health checks against one production prefork backend, for
# docs/scale-out.md ("A paper plan for 100 hosts"). Not run by the suite.
# usage: python3 checkcost.py PRODUCTION_BIN RATE SECONDS
import os, socket, subprocess, sys, time
bin_, rate, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tck = os.sysconf('SC_CLK_TCK')
def free():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p
port, agent = free(), free()
p = subprocess.Popen([bin_, '--mode', 'prefork', '--allow-root', '--listen', f'127.0.0.1:{port}',
                      '--health', f'127.0.0.1:{agent}'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
try:
    p.stdout.readline()
    time.sleep(0.5)
    def pids():
        out = [p.pid]
        for d in os.listdir('/proc'):
            if d.isdigit():
                try:
                    f = open(f'/proc/{d}/stat').read().rsplit(')', 1)[1].split()
                    if int(f[1]) == p.pid: out.append(int(d))
                except OSError: pass
        return out
    def cpu():
        t = 0
        for q in pids():
            try:
                f = open(f'/proc/{q}/stat').read().rsplit(')', 1)[1].split()
                t += int(f[11]) + int(f[12])
            except OSError: pass
        return t / tck
    for kind, target in (('agent-check', agent), ('tcp check', port)):
        c0, t0, n, bad = cpu(), time.monotonic(), 0, 0
        while time.monotonic() - t0 < secs:
            due = t0 + n / rate
            d = due - time.monotonic()
            if d > 0: time.sleep(d)
            s = socket.create_connection(('127.0.0.1', target), timeout=2)
            if kind == 'agent-check':
                r = s.recv(64)
                if not r.startswith(b'ready up'): bad += 1
            s.close(); n += 1
        el = time.monotonic() - t0
        used = cpu() - c0
        print(f'{kind}: {n} checks in {el:.1f} s ({n/el:.0f}/s), backend CPU {used:.2f} s = {100*used/el:.1f}% of a core, {1e6*used/n:.0f} us per check, {bad} bad replies')
finally:
    p.terminate(); p.wait()

"""Records real PROXY protocol headers from HAProxy into the proxy_header
seed corpus.

    python3 fuzz/seeds/record_proxy.py fuzz/seeds/proxy_header

Starts HAProxy (Debian's `haproxy`) on loopback only, with `send-proxy`
(v1) and `send-proxy-v2` (with and without TLVs) backends pointing at a
capture listener, plus a health check with `check-send-proxy` (a v2 LOCAL
header); connects through each frontend over IPv4 and IPv6 and saves the
bytes that arrive before the client's own data. HAProxy is stopped by its
pid at the end.
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    s = socket.socket(family)
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return p


captured = []
lock = threading.Lock()


def capture(listener):
    while True:
        try:
            c, _ = listener.accept()
        except OSError:
            return
        c.settimeout(2)
        data = b""
        try:
            while True:
                b = c.recv(4096)
                if not b:
                    break
                data += b
                if data.endswith(b"MARK"):
                    break
        except OSError:
            pass
        with lock:
            captured.append(data)
        c.close()


cap4 = socket.socket()
cap4.bind(("127.0.0.1", 0))
cap4.listen(64)
cport = cap4.getsockname()[1]
threading.Thread(target=capture, args=(cap4,), daemon=True).start()

backends = {
    "v1": "send-proxy",
    "v2": "send-proxy-v2",
    "v2tlv": "send-proxy-v2 proxy-v2-options authority,unique-id,crc32c",
}
cfg = ["global", "  log stdout format raw local0 emerg",
       "defaults", "  mode tcp", "  timeout connect 2s", "  timeout client 2s",
       "  timeout server 2s", "  unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt"]
fronts = []
for name, opts in backends.items():
    p4 = free_port()
    p6 = free_port(socket.AF_INET6, "::1")
    fronts.append((name, socket.AF_INET, "127.0.0.1", p4))
    fronts.append((name, socket.AF_INET6, "::1", p6))
    cfg += [f"frontend f_{name}", f"  bind 127.0.0.1:{p4}", f"  bind [::1]:{p6}",
            f"  default_backend b_{name}",
            f"backend b_{name}", f"  server s 127.0.0.1:{cport} {opts}"]
# A health check with the PROXY header: HAProxy sends a v2 LOCAL header.
cfg += ["backend b_check",
        f"  server s 127.0.0.1:{cport} send-proxy-v2 check check-send-proxy inter 200ms"]
cfgfile = tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False)
cfgfile.write("\n".join(cfg) + "\n")
cfgfile.close()
ha = subprocess.Popen(["haproxy", "-db", "-f", cfgfile.name],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    time.sleep(1.0)
    for name, fam, host, port in fronts:
        c = socket.socket(fam)
        c.connect((host, port))
        c.sendall(b"MARK")
        c.close()
    time.sleep(1.0)
finally:
    ha.terminate()
    ha.wait(timeout=5)
    os.unlink(cfgfile.name)

n = 0
seen = set()
for data in captured:
    header = data[:-4] if data.endswith(b"MARK") else data
    if not header or header in seen:
        continue
    seen.add(header)
    kind = "v1" if header.startswith(b"PROXY ") else "v2"
    with open(os.path.join(out, f"haproxy-{kind}-{n}"), "wb") as f:
        f.write(header)
    n += 1
print(f"{n} distinct headers from HAProxy written to {out}")

"""Records the command lines of real FTP clients (Python's ftplib, curl,
lftp) talking to the FTP example, into the ftp_command seed corpus.

    cargo build --example ftp
    python3 fuzz/seeds/record_ftp.py target/debug/examples/ftp fuzz/seeds/ftp_command

Everything listens on 127.0.0.1. The example server is started with a
temporary root and stopped by its pid; a relay in front of it records what
each client sends on the control connection, and every line becomes one
seed file.
"""
import ftplib
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

binary, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


root = tempfile.mkdtemp()
os.makedirs(os.path.join(root, "dir", "sub"))
with open(os.path.join(root, "dir", "file.txt"), "wb") as f:
    f.write(b"hello\n" * 100)
sport = free_port()
server = subprocess.Popen([binary, "--root", root, "--listen", f"127.0.0.1:{sport}",
                           "--mode", "threading", "--user", "bob:secret"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

sent = []
lock = threading.Lock()


def pump(a, b, record):
    while True:
        try:
            data = a.recv(65536)
        except OSError:
            data = b""
        if not data:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        if record:
            with lock:
                sent.append(data)
        b.sendall(data)


relay = socket.socket()
relay.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
relay.bind(("127.0.0.1", 0))
relay.listen(16)
rport = relay.getsockname()[1]


def accept_loop():
    while True:
        try:
            c, _ = relay.accept()
        except OSError:
            return
        s = socket.create_connection(("127.0.0.1", sport))
        threading.Thread(target=pump, args=(c, s, True), daemon=True).start()
        threading.Thread(target=pump, args=(s, c, False), daemon=True).start()


threading.Thread(target=accept_loop, daemon=True).start()
try:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", sport)).close()
            break
        except OSError:
            time.sleep(0.1)

    # ftplib: most commands of the example.
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", rport, timeout=10)
    ftp.login("bob", "secret")
    ftp.sendcmd("SYST")
    ftp.sendcmd("FEAT")
    ftp.pwd()
    ftp.cwd("dir")
    ftp.nlst()
    ftp.retrlines("LIST")
    ftp.sendcmd("TYPE I")
    ftp.size("file.txt")
    ftp.sendcmd("MDTM file.txt")
    ftp.retrbinary("RETR file.txt", lambda b: None)
    ftp.storbinary("STOR up load.bin", io.BytesIO(b"x" * 1000))
    ftp.storbinary("APPE up load.bin", io.BytesIO(b"y" * 10))
    ftp.rename("up load.bin", "renamed.bin")
    ftp.mkd("new dir")
    ftp.rmd("new dir")
    ftp.delete("renamed.bin")
    ftp.sendcmd("CDUP")
    ftp.sendcmd("NOOP")
    ftp.sendcmd("STAT")
    ftp.set_pasv(False)
    ftp.retrlines("LIST dir")
    ftp.sendcmd("REST 5")
    ftp.sendcmd("REST 0")
    try:
        ftp.sendcmd("XYZZY")
    except ftplib.error_perm:
        pass
    ftp.quit()

    url = f"ftp://127.0.0.1:{rport}/"
    curl = ["curl", "-sS", "--max-time", "30", "-u", "bob:secret"]
    run = lambda args: subprocess.run(curl + args, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, timeout=60)
    run([url + "dir/"])
    run([url + "dir/file.txt", "-o", "/dev/null"])
    run(["-T", os.path.join(root, "dir", "file.txt"), url + "dir/copy.txt"])
    run(["--ftp-port", "127.0.0.1", url + "dir/file.txt", "-o", "/dev/null"])
    run(["-C", "100", url + "dir/file.txt", "-o", "/dev/null"])
    run(["-Q", "DELE dir/copy.txt", url])
    lftp = f"set net:max-retries 1; set net:timeout 10; ls; cd dir; get file.txt -o /dev/null; " \
           f"put {os.path.join(root, 'dir', 'file.txt')} -o lftp.txt; mkdir d2; rmdir d2; rm lftp.txt; quit"
    subprocess.run(["lftp", "-u", "bob,secret", "-e", lftp, f"ftp://127.0.0.1:{rport}"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    time.sleep(0.5)
finally:
    server.terminate()
    server.wait(timeout=5)
    relay.close()

lines = set()
for chunk in b"".join(sent).split(b"\n"):
    if chunk:
        lines.add(chunk + b"\n")
for i, line in enumerate(sorted(lines)):
    with open(os.path.join(out, f"line-{i:03}"), "wb") as f:
        f.write(line)
print(f"{len(lines)} distinct command lines written to {out}")

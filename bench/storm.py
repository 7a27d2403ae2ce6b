"""Connection storm: opens N keep-alive connections to a server, sends one request on each and
reads the answer (so each connection has buffers), holds them, then closes them all. Prints the
server's RSS idle, with N connections open, and 10 s after they closed.

    python3 bench/storm.py PID PORT [N]
"""
import resource
import socket
import sys
import time

pid, port = int(sys.argv[1]), int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))


def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])


idle = rss_kib()
request = b"GET /api/images?limit=10&offset=0 HTTP/1.1\r\nHost: x\r\n\r\n"
socks, answered = [], 0
started = time.time()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    socks.append(s)
for s in socks:
    s.settimeout(10)
    try:
        if s.recv(65536).startswith(b"HTTP/1.1 200"):
            answered += 1
    except OSError:
        pass
held = rss_kib()
opened_s = time.time() - started
for s in socks:
    s.close()
time.sleep(10)
after = rss_kib()
print(f"connections={n} answered={answered} open_s={opened_s:.2f} "
      f"idle_rss_kib={idle} held_rss_kib={held} after_close_10s_rss_kib={after}")

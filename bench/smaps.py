"""What a running server's resident memory is made of, from /proc/PID/smaps: `key=value` lines
in KiB, for `bench/run.sh` (the memory section of the report).

    python3 bench/smaps.py PID

The mappings are sorted into:
- binary_code, binary_rodata, binary_data: the executable's own pages that have been touched
  (its code, its constants and embedded assets, its writable statics);
- libraries: glibc, libm, the dynamic loader;
- malloc_main: glibc's main arena (`[heap]`);
- malloc_threads: glibc's per-thread arenas, anonymous heaps that start on a 64 MiB boundary
  (HEAP_MAX_SIZE on 64-bit);
- stacks: anonymous mappings just after a one-page guard (`---p`), as thread stacks are made,
  and the main thread's `[stack]`;
- other_anon: everything else anonymous, chiefly blocks above glibc's mmap threshold (the server
  lowers it to 1 MiB, so large buffers get a mapping of their own).
"""
import re
import sys
from collections import Counter

ARENA_ALIGN = 64 << 20
PAGE = 4096


def classify(pid):
    exe = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()
    exe_name = exe.rsplit("/", 1)[-1]
    kib = Counter()
    prev = None  # (end, perms, path) of the mapping before
    current = None
    for line in open(f"/proc/{pid}/smaps"):
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
        if m:
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            perms, path = m.group(3), m.group(4).strip()
            if path.endswith("/" + exe_name) or path == exe:
                current = ("binary_code" if "x" in perms
                           else "binary_data" if "w" in perms else "binary_rodata")
            elif path.startswith("/"):
                current = "libraries"
            elif path == "[heap]":
                current = "malloc_main"
            elif path == "[stack]":
                current = "stacks"
            elif path:
                current = "kernel"  # [vdso], [vvar], [vsyscall]
            elif "w" not in perms:
                current = "guard"  # reserved, never resident
            elif start % ARENA_ALIGN == 0:
                current = "malloc_threads"
            elif prev and prev[0] == start and prev[1].startswith("---") and prev[2] == PAGE:
                current = "stacks"
            else:
                current = "other_anon"
            prev = (end, perms, end - start)
        elif line.startswith("Rss:"):
            kib[current] += int(line.split()[1])
    return kib


def main():
    kib = classify(sys.argv[1])
    order = ["binary_code", "binary_rodata", "binary_data", "libraries", "malloc_main",
             "malloc_threads", "stacks", "other_anon", "kernel", "guard"]
    for key in order:
        print(f"{key}_kib={kib.get(key, 0)}")
    print(f"total_kib={sum(kib.values())}")


if __name__ == "__main__":
    main()

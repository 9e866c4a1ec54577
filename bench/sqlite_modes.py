#!/usr/bin/env python3
"""What SQLite's journal mode and page size cost a bulk load, apart from Tributary.

Usage: sqlite_modes.py [--rows 868000] [--dir /tmp] [--repeat 2]

Loads `rows` synthetic rows shaped like the reference workload's loaded table (a UUID key with a
unique index, timestamp text, URL, a 64-hex hash, lineage text) into a fresh SQLite file in one
transaction with `synchronous=FULL` and a 64 MiB cache, as the embedded warehouse does, upserting
in key-sorted slices of 28,000 rows (one lake file's worth). For each (journal mode, page size) it
prints the insert CPU time (Python's binding included), the commit's wall time (for WAL, the
automatic checkpoint that copies the pages into the file) and the file size. Configurations run
round-robin, `repeat` times, so that machine drift hits each alike.
"""
import argparse
import os
import random
import sqlite3
import time
import uuid

CONFIGS = [("wal", 4096), ("delete", 4096), ("delete", 16384)]


def rows(n):
    rnd = random.Random(1)
    out = [
        (
            str(uuid.UUID(int=rnd.getrandbits(128))),
            "2026-01-01 00:00:00.000000",
            "https://shop.example/cart/%d" % i,
            "%064x" % rnd.getrandbits(256),
            "/data/ev_1000000.ndjson",
            i,
            "b-0123456789abcdef0123456789abcdef",
        )
        for i in range(n)
    ]
    return [sorted(out[i : i + 28000]) for i in range(0, n, 28000)]


def load(path, mode, page, slices):
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute(f"PRAGMA page_size={page}")
    c.execute(f"PRAGMA journal_mode={mode}")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("PRAGMA cache_size=-65536")
    c.execute("CREATE TABLE t (id TEXT, ts TEXT, url TEXT, h TEXT, src TEXT, off INTEGER, batch TEXT)")
    c.execute("CREATE UNIQUE INDEX t_id ON t (id)")
    cpu0 = time.process_time()
    c.execute("BEGIN")
    for s in slices:
        c.executemany(
            "INSERT INTO t VALUES (?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET off = excluded.off",
            s,
        )
    cpu1 = time.process_time()
    w = time.time()
    c.execute("COMMIT")
    commit = time.time() - w
    c.close()
    return cpu1 - cpu0, commit, os.path.getsize(path) >> 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=868000)
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    slices = rows(a.rows)
    for _ in range(a.repeat):
        for mode, page in CONFIGS:
            path = os.path.join(a.dir, f"sqlite_modes_{mode}_{page}.db")
            cpu, commit, mb = load(path, mode, page, slices)
            print(f"journal={mode:6} page={page:5}  insert CPU {cpu:5.2f} s  commit {commit:5.2f} s  file {mb} MB")
            os.remove(path)


if __name__ == "__main__":
    main()

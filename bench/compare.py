#!/usr/bin/env python3
"""Run the Tributary worker and the DuckDB / Polars peers on the same input, in the same command.

Usage: compare.py --input FILE --worker BIN --pipeline TOML --bench-dir ../shared/bench
                  [--peers duckdb,polars] [--modes 1core,all] [--runs 3] [--python PY] [--json OUT]
                  [--baseline OLD_BIN [--baseline-pipeline OLD_TOML]]

`--baseline` adds an earlier build of the worker as one more peer (`baseline`), run on the same
input with the same arguments: the before/after cost of a change, measured in one command.

Each (peer, mode) runs `runs` times, round-robin so that load drift hits every peer alike, under
/usr/bin/time -v. Modes: `1core` = taskset -c 0 plus each tool's thread knob (worker --threads 1,
DuckDB SET threads=1, POLARS_MAX_THREADS=1); `all` = every core. Every output is checked with
verify.py (the first run of each configuration; all runs must print identical counts). Prints a
Markdown table of medians and the throughput ratios of Tributary against each peer.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time


def time_v(stderr):
    def grab(key):
        m = re.search(r"^\s*" + re.escape(key) + r":\s*(.+)$", stderr, re.M)
        return m.group(1).strip() if m else None

    wall = grab("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    return {"wall_s": secs, "cpu_s": float(grab("User time (seconds)")) + float(grab("System time (seconds)")),
            "rss_mb": int(grab("Maximum resident set size (kbytes)")) / 1024, "exit": int(grab("Exit status"))}


def command(a, peer, mode, out):
    env = dict(os.environ)
    env.pop("POLARS_MAX_THREADS", None)
    one = mode == "1core"
    if peer in ("tributary", "baseline"):
        worker, pipeline = (a.worker, a.pipeline) if peer == "tributary" else \
            (a.baseline, a.baseline_pipeline or a.pipeline)
        cmd = [worker, "process", pipeline, "--input", a.input, "--output", out,
               "--quarantine", out + ".quarantine.ndjson", "--threads", "1" if one else str(os.cpu_count())]
    elif peer == "duckdb":
        cmd = [a.python, os.path.join(a.bench_dir, "peer_duckdb.py"), a.input, out] + (["--threads", "1"] if one else [])
    elif peer == "polars":
        cmd = [a.python, os.path.join(a.bench_dir, "peer_polars.py"), "--hash", "plugin", a.input, out]
        if one:
            env["POLARS_MAX_THREADS"] = "1"
    else:
        sys.exit(f"unknown peer {peer}")
    if one:
        cmd = ["taskset", "-c", "0"] + cmd
    return ["/usr/bin/time", "-v"] + cmd, env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--worker", required=True)
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--bench-dir", required=True)
    ap.add_argument("--work", default=None, help="scratch folder (default: beside the input)")
    ap.add_argument("--peers", default="duckdb,polars")
    ap.add_argument("--modes", default="1core,all")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", default=None, help="append one JSON line per run to this file")
    ap.add_argument("--baseline", default=None, help="an earlier worker binary, run as peer 'baseline'")
    ap.add_argument("--baseline-pipeline", default=None, help="its pipeline file (default --pipeline)")
    a = ap.parse_args()
    a.input = os.path.abspath(a.input)
    work = a.work or os.path.join(os.path.dirname(a.input), "bench-work")
    os.makedirs(work, exist_ok=True)
    peers = ["tributary"] + (["baseline"] if a.baseline else []) + [p for p in a.peers.split(",") if p]
    input_mb = os.path.getsize(a.input) / 1e6
    results = {}
    for mode in a.modes.split(","):
        for r in range(a.runs):
            for peer in peers:
                out = os.path.join(work, f"out_{peer}_{mode}")
                shutil.rmtree(out, ignore_errors=True)
                for extra in (out + ".quarantine.ndjson",):
                    if os.path.exists(extra):
                        os.remove(extra)
                cmd, env = command(a, peer, mode, out)
                load = open("/proc/loadavg").read().split()[0]
                p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                rec = time_v(p.stderr)
                rec.update(peer=peer, mode=mode, run=r + 1, load1=load, input_mb=input_mb,
                           started=time.strftime("%Y-%m-%dT%H:%M:%S"))
                stats = [json.loads(l[6:]) for l in p.stdout.splitlines() if l.startswith("STATS ")]
                if rec["exit"] != 0 or not stats:
                    sys.exit(f"{peer} {mode} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
                rec["stats"] = {k: stats[0].get(k) for k in ("lines_total", "malformed", "bad_ts", "unwanted", "duplicates", "rows_out")}
                if r == 0:
                    v = subprocess.run([a.python, os.path.join(a.bench_dir, "verify.py"), out, "--json"],
                                       capture_output=True, text=True)
                    vj = json.loads(v.stdout)
                    rec["checksum"] = vj["checksum"]
                    rec["problems"] = vj["problems"]
                results.setdefault((peer, mode), []).append(rec)
                print(f"{peer:>10} {mode:>5} run{r + 1} load={load} wall={rec['wall_s']:.2f}s cpu={rec['cpu_s']:.2f}s "
                      f"rss={rec['rss_mb']:.0f}MB {rec.get('checksum', '')}", flush=True)
                if a.json:
                    with open(a.json, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                shutil.rmtree(out, ignore_errors=True)
    # Every configuration must agree on the counts and the checksum.
    sums = {rs[0].get("checksum") for rs in results.values()}
    counts = {json.dumps(r["stats"], sort_keys=True) for rs in results.values() for r in rs
              if r["peer"] in ("tributary", "baseline")}
    ok = len(sums) == 1 and len(counts) == 1 and not any(rs[0].get("problems") for rs in results.values())
    print()
    print(f"input: {os.path.basename(a.input)}, {input_mb:,.0f} MB; medians of {a.runs} run(s); "
          f"checksums {'all equal: ' + sums.pop() if ok else 'DIFFER: ' + str(sums)}")
    print()
    print("| peer | mode | wall s | CPU s | MB/s per core-s | MB/s wall | peak RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    med = {}
    for (peer, mode), rs in results.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        rss = max(r["rss_mb"] for r in rs)
        med[(peer, mode)] = (wall, cpu, rss)
        print(f"| {peer} | {mode} | {wall:.2f} | {cpu:.2f} | {input_mb / cpu:.0f} | {input_mb / wall:.0f} | {rss:,.0f} |")
    print()
    for mode in a.modes.split(","):
        t = med.get(("tributary", mode))
        b = med.get(("baseline", mode))
        if t and b:
            print(f"- {mode}: this build against the baseline: {(t[1] / b[1] - 1) * 100:+.1f}% CPU, "
                  f"{(t[0] / b[0] - 1) * 100:+.1f}% wall, peak RSS {t[2]:,.0f} vs {b[2]:,.0f} MB")
        for peer in peers[1:]:
            p = med.get((peer, mode))
            if peer == "baseline":
                continue
            if t and p:
                print(f"- {mode}: Tributary / {peer}: {p[1] / t[1]:.2f}x MB/s per core-s, {p[0] / t[0]:.2f}x wall throughput, "
                      f"peak RSS {t[2]:,.0f} vs {p[2]:,.0f} MB")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Attributes collapsed perf stacks to the ingester's stages (docs/benchmarks.md, e2e).

Usage: perf_stages.py STACKS.folded [STAGE]   (STACKS from `perf script | inferno-collapse-perf --all`)

Each stack goes to the stage of the frame nearest its leaf that names one (generic arguments
stripped, so a stage named only in a type parameter does not count); a stack naming none goes
by its leaf (kernel, libc, tokio runtime, other). With STAGE, also lists that stage's top frames.
"""
import re, sys, collections
STAGES = [  # (stage, regex on one frame), checked frame by frame from the leaf
    ("dedup (cache)", r"moka::|mini_scan::stages::dedup|CommittedOrders|crossbeam_channel"),
    ("decode (serde_json, base64)", r"mini_scan::stages::decode|serde_json::|serde_core::|base64::|core::net::parser"),
    ("write (tokio-postgres, COPY, upsert, verdicts)", r"tokio_postgres|postgres_protocol|postgres_types|deadpool|mini_scan::stages::write|mini_scan::pipeline::sink"),
    ("batch (chunks_timeout)", r"ChunksTimeout|chunks_timeout|mini_scan::pipeline::batch"),
    ("ack (settle_batch, Pub/Sub ack handles)", r"settle_batch|PubsubAck|subscriber::handler"),
    ("metrics", r"metrics::|metrics_util|metrics_exporter_prometheus|mini_scan::telemetry|mini_scan::pipeline::instrument"),
    ("pipeline task (combinators inlined in it: tally, envelope moves, ack loop)", r"mini_scan::pipeline::"),
    ("source (Pub/Sub client: gRPC, HTTP/2, protobuf, leases)", r"google_cloud_|gaxi::|tonic::|h2::|hyper|prost::|tower::|mini_scan::stages::source|rustls|http_body"),
]
LEAF = [
    ("kernel", r"\[k\]$|_\[k\]|^\[kernel|entry_SYSCALL|do_syscall"),
    ("libc (malloc, memcpy)", r"libc|malloc|free|memmove|memcpy|memcmp|_int_"),
    ("tokio runtime, futures", r"tokio::|futures_|parking_lot|std::thread"),
]
def strip(f):
    """A frame's name without generic arguments; `<T as Trait>::m` keeps T and Trait."""
    def flat(x):
        out, depth = [], 0
        for ch in x:
            if ch == "<": depth += 1
            elif ch == ">": depth = max(depth - 1, 0)
            elif depth == 0: out.append(ch)
        return "".join(out)
    if f.startswith("<"):
        depth = 0
        for j, ch in enumerate(f):
            depth += ch == "<"
            depth -= ch == ">"
            if depth == 0:
                return flat(f[1:j]) + flat(f[j + 1:])
    return flat(f)

comp = [(n, re.compile(p)) for n, p in STAGES]
leafc = [(n, re.compile(p)) for n, p in LEAF]
tot = collections.Counter(); n_all = 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip().rpartition(" ")
    count = int(count); n_all += count
    raw = stack.split(";")
    frames = [strip(f) for f in raw]
    stage = None
    for f in reversed(frames):
        for name, rx in comp:
            if rx.search(f):
                stage = name; break
        if stage: break
    if not stage:
        leaf = raw[-1]
        for name, rx in leafc:
            if rx.search(leaf):
                stage = "unattributed: " + name; break
        else:
            stage = "unattributed: other"
    tot[stage] += count
for k, v in tot.most_common():
    print(f"{100*v/n_all:6.1f}%  {v:6d}  {k}")
print(f"total {n_all}")
if len(sys.argv) > 2:
    want = sys.argv[2]
    agg = collections.Counter()
    for line in open(sys.argv[1]):
        stack, _, count = line.rstrip().rpartition(" ")
        raw = stack.split(";"); frames = [strip(f) for f in raw]
        for i in range(len(frames) - 1, -1, -1):
            hit = next((n for n, rx in comp if rx.search(frames[i])), None)
            if hit:
                if want in hit:
                    agg[(frames[i][:90], strip(raw[-1])[:60])] += int(count)
                break
    for (m, l), v in agg.most_common(25):
        print(f"{100*v/n_all:5.1f}%  {m}  <-leaf {l}")

"""Region runs at scale: the local CLI path against Ray workers, per-chunk overhead, writer speed.

Measures, on the same regions and model, side by side in one run:

* regions/s of the local path (``basewise.runs.ism_regions`` in this process, ``--threads``
  torch threads; warm, and the first run in the process, which captures the model), and of
  ``ray="local"`` with 1 and 2 single-thread workers (each worker captures the model in its
  first chunk), plus the Ray runs' steady state (the chunks after each worker's first);
* the Ray path's per-chunk overhead: the driver's wall time per chunk minus the workers'
  compute time per chunk (scheduling, transfer of indices and scores, the write);
* where a Ray run's time goes, from timestamps taken in the actors and at the driver (one record
  per chunk, ``RayRunner.trace``): the actor's scoring time and CPU time, the time from the end
  of scoring to the result being ready at the driver (serialisation, object store, the driver's
  wait), the driver's ``ray.get`` and write, each actor's idle gaps between chunks and its busy
  fraction, the driver's CPU use and the whole machine's (``/proc/stat``) during the run;
* the single writer's throughput (``ResultsWriter.write`` of score arrays of the run's shape,
  MB/s and regions/s), which bounds how many workers one driver can feed.

Every run's scores are checked against the local run's before any time is reported.

Usage:
    python benchmarks/bench_scale.py [--model basset|demo] [--regions 64] [--length 1000]
                                     [--chunk-size 8] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from basewise.results import ResultsWriter, open_results  # noqa: E402
from basewise.runs import ism_regions  # noqa: E402

MODEL_SRC = """
import sys
sys.path.insert(0, {bench!r})
import models, torch

def build():
    torch.manual_seed(0)
    if {name!r} == "basset":
        return models.basset_like(4, length={length}).eval()
    from basewise.demo import load_demo_model
    return load_demo_model()
"""


def _genome(d: str, n: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    size = n * length + 1000
    path = os.path.join(d, "genome.fa")
    with open(path, "w") as fh:
        fh.write(">chr1\n" + "".join(rng.choice(list("ACGT"), size)) + "\n")
    starts = rng.integers(0, size - length, n)
    import pandas as pd

    bed = pd.DataFrame({"chrom": "chr1", "start": starts, "end": starts + length,
                        "name": [f"r{i}" for i in range(n)], "strand": ["+-"[i % 2] for i in range(n)]})
    return path, bed


def _cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (all cores; /proc/stat), NaN where unknown."""
    try:
        with open("/proc/stat") as fh:
            v = [float(x) for x in fh.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    except (OSError, ValueError, IndexError):
        return float("nan")


def profile(trace, stats, machine_cpu_s):
    """Summary of one RayRunner.run's trace (times in ms per chunk, fractions of the run)."""
    wall = stats["wall_s"]
    tr = sorted(trace, key=lambda r: r["start"])
    ms = lambda xs: 1e3 * float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
    by_actor = {}
    for r in tr:
        by_actor.setdefault(r["actor"], []).append(r)
    gaps, busy, first = [], 0.0, []
    for rs in by_actor.values():
        first.append(rs[0]["end"] - rs[0]["start"])
        gaps += [rs[i + 1]["start"] - rs[i]["end"] for i in range(len(rs) - 1)]
        busy += sum(r["end"] - r["start"] for r in rs)
    steady = [r for rs in by_actor.values() for r in rs[1:]]
    # steady-state rate: each actor's regions after its first chunk over the time they took (from
    # the end of its first chunk to the end of its last: scoring and the gaps between chunks)
    rate = sum(sum(r["regions"] for r in rs[1:]) / (rs[-1]["end"] - rs[0]["end"])
               for rs in by_actor.values() if len(rs) > 1)
    return dict(
        compute_ms=ms([r["end"] - r["start"] for r in steady]), first_compute_ms=ms(first),
        compute_cpu_ms=ms([r["cpu"] for r in steady]),
        return_ms=ms([r["ready"] - r["end"] for r in tr]), get_ms=ms([r["got"] - r["ready"] for r in tr]),
        write_ms=ms([r["written"] - r["got"] for r in tr]),
        round_trip_ms=ms([r["ready"] - r["sent"] for r in tr]),
        gap_ms=ms(gaps), gap_max_ms=1e3 * max(gaps, default=float("nan")),
        busy_frac=busy / (wall * len(by_actor)), head_ms=1e3 * (min(r["start"] for r in tr) - stats["t0"]),
        tail_ms=1e3 * (stats["t0"] + wall - max(r["end"] for r in tr)),
        driver_cpu_frac=stats["driver_cpu_s"] / wall, actors_cpu_frac=sum(r["cpu"] for r in tr) / wall,
        machine_cpu_frac=machine_cpu_s / wall, wall_s=wall, steady_regions_s=rate)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["basset", "demo"], default="basset")
    ap.add_argument("--regions", type=int, default=48)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--positions", type=int, default=100, help="mutated positions per region (centre)")
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    length = 200 if args.model == "demo" else args.length
    d = tempfile.mkdtemp(prefix="bench_scale_")
    with open(os.path.join(d, "scalemodels.py"), "w") as fh:
        fh.write(MODEL_SRC.format(bench=os.path.dirname(os.path.abspath(__file__)), name=args.model,
                                  length=length))
    genome, bed = _genome(d, args.regions, length)
    spec = os.path.join(d, "scalemodels.py") + ":build"
    start = (length - args.positions) // 2
    common = dict(start_pos=start, end_pos=start + args.positions, chunk_size=args.chunk_size, progress=False,
                  overwrite=True)
    torch.set_num_threads(args.threads)
    rows = []

    profiles = []
    from basewise import _ray

    run = _ray.RayRunner.run
    machine = {}

    def measured_run(self, *a, **kw):  # the whole machine's CPU while the chunks run
        c0 = _cpu_busy_s()
        try:
            return run(self, *a, **kw)
        finally:
            machine["cpu_s"] = _cpu_busy_s() - c0

    _ray.RayRunner.run = measured_run

    def timed(label, **kw):
        out = os.path.join(d, label.replace(" ", "_") + ".h5")
        with ism_regions(spec, bed, genome, out, **common, **kw) as r:
            scores = r.scores[()]
            s = r.run_summary
        if kw.get("ray"):
            trace, stats = _ray._last_run
            profiles.append((label, profile(trace, stats, machine["cpu_s"])))
        return s["chunks_s"], scores, s["startup_s"]

    # warm-up (imports, the model's first capture) outside the timings
    t_cold, _, st_cold = timed("warmup", engine="auto")
    t_local, ref, st = timed("local", engine="auto")
    out_local = os.path.join(d, "local.h5")
    rows.append(("local (this process, %d threads)" % args.threads, t_local, st))
    cold = ("local, first run in this process", t_cold, st_cold)
    from basewise._ray import start_local_ray

    import ray

    start_local_ray(num_cpus=args.threads)
    try:
        timed("ray warmup", engine="auto", ray=True, workers=1, threads_per_worker=1)
        for w in (1, 2):
            t, s, st = timed(f"ray {w}", engine="auto", ray=True, workers=w, threads_per_worker=1)
            np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-6 * float(np.abs(ref).max()))
            rows.append((f"ray local, {w} worker(s) x 1 thread", t, st))
    finally:
        ray.shutdown()
    n_chunks = -(-args.regions // args.chunk_size)

    # the writer alone: write the same arrays again into a fresh file
    with open_results(out_local) as r:
        table, seq_len, arguments = r.regions, int(r._f.attrs["seq_len"]), r.arguments
        scores = r.scores[()]
    idx_all = np.arange(args.regions)
    onehot = np.zeros((args.regions, seq_len), dtype=np.int8)
    path = os.path.join(d, "writer.h5")
    t0 = time.perf_counter()
    with ResultsWriter(path, "ism", table, seq_len, arguments, overwrite=True, chunk_regions=args.chunk_size) as w:
        for s in range(0, args.regions, args.chunk_size):
            sl = idx_all[s:s + args.chunk_size]
            w.write(sl, onehot[sl], scores[sl])
    t_write = time.perf_counter() - t0
    mb = scores.nbytes / 1e6

    print(f"\nbench_scale: {args.model}-like model, {args.regions} regions of {length} bp, "
          f"{args.positions} mutated positions each, chunks of {args.chunk_size} ({n_chunks} chunks)")
    print("(chunks: scoring and writing every chunk; start-up, once per run: loading the model here, or "
          "starting the workers, each loading the model and importing torch.export's tracer. The local row is "
          "warm (the plan captured by an earlier run in this process); the first run in this process, and each "
          "Ray worker's first chunk, also capture the model for the incremental engine)")
    print(f"{'path':<40} {'start-up s':>10} {'chunks s':>9} {'regions/s':>10} {'vs local':>9} {'ms/chunk':>9}")
    for label, t, st in rows[:1] + [cold] + rows[1:]:
        print(f"{label:<40} {st:>10.2f} {t:>9.2f} {args.regions / t:>10.2f} {t_local / t:>8.2f}x "
              f"{t / n_chunks * 1e3:>9.0f}")
    print("\nRay profile (ms per chunk; 'first' = each actor's first chunk, 'steady' = the others; "
          "fractions of the run's wall time, CPU in cores; machine = every process, /proc/stat)")
    for label, p in profiles:
        if label == "ray warmup":
            continue
        print(f"{label}: scoring steady {p['compute_ms']:.0f} (CPU {p['compute_cpu_ms']:.0f}), first "
              f"{p['first_compute_ms']:.0f}; end of scoring -> ready at driver {p['return_ms']:.1f}, ray.get "
              f"{p['get_ms']:.1f}, write {p['write_ms']:.1f}; actor gap between chunks {p['gap_ms']:.1f} "
              f"(max {p['gap_max_ms']:.1f}); actors busy {100 * p['busy_frac']:.0f}% (first chunk starts "
              f"{p['head_ms']:.0f} ms in, last ends {p['tail_ms']:.0f} ms before the end); CPU: driver "
              f"{p['driver_cpu_frac']:.2f}, actors' scoring {p['actors_cpu_frac']:.2f}, machine "
              f"{p['machine_cpu_frac']:.2f} of {os.cpu_count()}; steady state {p['steady_regions_s']:.2f} "
              f"regions/s = {p['steady_regions_s'] * t_local / args.regions:.2f}x local")
    print(f"writer: {mb:.1f} MB of scores in {t_write:.3f} s = {mb / t_write:.0f} MB/s, "
          f"{args.regions / t_write:.0f} regions/s (gzip, chunks of {args.chunk_size})")
    import shutil

    shutil.rmtree(d, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "cold": cold, "profiles": profiles, "writer_s": t_write, "scores_mb": mb,
                       "args": vars(args)}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

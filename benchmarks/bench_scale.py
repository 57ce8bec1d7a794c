"""Region runs at scale: the local CLI path against Ray workers, per-chunk overhead, writer speed.

Measures, on the same regions and model, side by side in one run:

* regions/s of the local path (``basewise.runs.ism_regions`` in this process, ``--threads``
  torch threads), and of ``ray="local"`` with 1 and 2 single-thread workers;
* the Ray path's per-chunk overhead: the driver's wall time per chunk minus the workers'
  compute time per chunk (scheduling, transfer of indices and scores, the write);
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

    def timed(label, **kw):
        out = os.path.join(d, label.replace(" ", "_") + ".h5")
        with ism_regions(spec, bed, genome, out, **common, **kw) as r:
            scores = r.scores[()]
            s = r.run_summary
        return s["chunks_s"], scores, s["startup_s"]

    # warm-up (imports, the model's first capture) outside the timings
    timed("warmup", engine="auto")
    t_local, ref, st = timed("local", engine="auto")
    out_local = os.path.join(d, "local.h5")
    rows.append(("local (this process, %d threads)" % args.threads, t_local, st))
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
    print("(chunks: scoring and writing every chunk, the steady state; start-up, once per run: loading the "
          "model here, or starting the workers and loading one model each)")
    print(f"{'path':<40} {'start-up s':>10} {'chunks s':>9} {'regions/s':>10} {'vs local':>9} {'ms/chunk':>9}")
    for label, t, st in rows:
        print(f"{label:<40} {st:>10.2f} {t:>9.2f} {args.regions / t:>10.2f} {t_local / t:>8.2f}x "
              f"{t / n_chunks * 1e3:>9.0f}")
    print(f"writer: {mb:.1f} MB of scores in {t_write:.3f} s = {mb / t_write:.0f} MB/s, "
          f"{args.regions / t_write:.0f} regions/s (gzip, chunks of {args.chunk_size})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "writer_s": t_write, "scores_mb": mb, "args": vars(args)}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

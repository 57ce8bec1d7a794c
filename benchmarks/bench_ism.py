"""Saturation ISM benchmark: basewise (incremental and full) vs tangermeme vs gReLU vs a naive loop.

Runs on the CPU with 2 threads (set inside this script only), one random sequence per model, every
single-base substitution (3L mutants plus the reference), side by side at an equal batch size:

* ``basewise incremental``: ``basewise.ISM_predict(..., engine="incremental")`` (plan cached, as
  on every call after the first; the one-off capture time is reported separately);
* ``basewise full``: ``basewise.ISM_predict(..., engine="full")``;
* ``tangermeme fast``: ``saturation_mutagenesis(fast=True, raw_outputs=True)`` with its
  minimum-job-time threshold (``_FAST_MIN_SECONDS``, 30 s) set to 0 so that its fastISM path
  really runs (it still captures and verifies the model on every call, as it does by design);
* ``tangermeme full``: the same with ``fast=False``;
* ``gReLU``: ``grelu.interpret.score.ISM_predict`` when grelu is installed (it is not a
  dependency; a note says so when it is missing), on a gReLU ``LightningModel`` whose network is
  the benchmark model; it predicts all 4 bases at every position (4L sequences), through its
  ``ISMDataset`` and a Lightning ``Trainer``;
* ``naive loop``: the reference plus all mutants as one-hot batches through the model under
  ``inference_mode``.

Before timing, every method's predictions are checked against the naive loop (max error relative
to the output scale, required <= 1e-5). Times are medians (minimum in brackets) of ``--repeats``
round-robin runs after one warm-up. The table also gives the FLOP ratio (full / incremental) that
the incremental plan predicts next to the measured basewise full / incremental ratio.

Models (see ``benchmarks/models.py``): Basset-like (L = 1000), BPNet-like (input 2114, counts
transform), conv + transformer (L = 1000).

Usage:
    python benchmarks/bench_ism.py [--models basset,bpnet,transformer] [--batch-size 64]
        [--repeats 3] [--skip tangermeme-full,grelu,naive] [--json out.json] [--wait-quiet 120]

Example:
    >>> # python benchmarks/bench_ism.py --models basset --repeats 1
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models as bench_models  # noqa: E402
from _timing import wait_quiet  # noqa: E402

import basewise  # noqa: E402
from basewise.incremental import plan_ism  # noqa: E402


class _WithTransform(torch.nn.Module):
    """model followed by a prediction transform, as one module (for tangermeme and naive)."""

    def __init__(self, model: torch.nn.Module, transform: Optional[Callable]) -> None:
        super().__init__()
        self.model = model
        self._t = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return self._t(y) if self._t is not None else y


def _onehot(idx: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(idx.shape[0], 5, idx.shape[1])
    x.scatter_(1, idx.long()[:, None, :], 1.0)
    return x[:, :4]


def _model_specs(names: List[str]):
    specs = []
    for name in names:
        if name == "basset":
            specs.append(("Basset-like", bench_models.basset_like(164), 1000, None))
        elif name == "bpnet":
            specs.append(("BPNet-like", bench_models.bpnet_like(), 2114, bench_models.bpnet_counts_transform))
        elif name == "transformer":
            specs.append(("conv+transformer", bench_models.conv_transformer(), 1000, None))
        else:
            raise SystemExit(f"--models: unknown model {name!r}")
    return specs


def _methods(model, length, transform, seq: str, idx: torch.Tensor, batch_size: int, skip: set):
    wrapped = _WithTransform(model, transform).eval()
    x1 = _onehot(idx[None])  # (1, 4, L)
    out: Dict[str, Callable[[], np.ndarray]] = {}
    notes: Dict[str, str] = {}

    def bw(engine):
        def run():
            y = basewise.ISM_predict(seq, model, prediction_transform=transform, batch_size=batch_size,
                                     return_df=False, engine=engine, progress=False)
            return y.reshape(length, 4, -1)
        return run

    out["basewise incremental"] = bw("incremental")
    out["basewise full"] = bw("full")

    try:
        import tangermeme
        sm = importlib.import_module("tangermeme.saturation_mutagenesis")

        def tm(fast):
            def run():
                old = sm._FAST_MIN_SECONDS
                sm._FAST_MIN_SECONDS = 0.0  # disable the 30 s minimum so the fast path runs
                try:
                    with warnings.catch_warnings(record=True) as w:
                        warnings.simplefilter("always")
                        res = sm.saturation_mutagenesis(wrapped, x1, batch_size=batch_size, raw_outputs=True,
                                                        device="cpu", fast=fast)
                    msgs = [str(m.message) for m in w if "fast=False" in str(m.message)]
                    if msgs:
                        notes["tangermeme fast"] = "fell back to fast=False: " + msgs[0][:160]
                finally:
                    sm._FAST_MIN_SECONDS = old
                y = res.y_hat  # (1, 4, L, *out)
                return y.reshape(4, length, -1).permute(1, 0, 2).numpy()
            return run

        if "tangermeme-fast" not in skip:
            out["tangermeme fast"] = tm(True)
        if "tangermeme-full" not in skip:
            out["tangermeme full"] = tm(False)
        notes["_tangermeme"] = tangermeme.__version__ if hasattr(tangermeme, "__version__") else "?"
    except ImportError:
        notes["tangermeme fast"] = notes["tangermeme full"] = "tangermeme not installed"

    if "grelu" not in skip:
        try:
            grelu_run = _grelu_method(model, transform, seq, length, batch_size)
        except ImportError:
            notes["gReLU"] = "grelu not installed (not a dependency); not run"
        else:
            out["gReLU"] = grelu_run
            notes["gReLU"] = ("grelu.interpret.score.ISM_predict on a LightningModel wrapping the same "
                              "network (predicts all 4 bases at every position, 4L sequences, through its "
                              "ISMDataset and a Lightning Trainer; its global matmul-precision change is "
                              "suppressed so that it computes at the same precision)")

    if "naive" not in skip:
        def naive():
            with torch.inference_mode():
                y0 = wrapped(x1).reshape(1, -1)
                muts = torch.tensor([(p, a) for p in range(length) for a in range(4) if a != int(idx[p])])
                res = torch.empty(length, 4, y0.shape[1])
                res[:] = y0
                for s in range(0, muts.shape[0], batch_size):
                    mb = muts[s:s + batch_size]
                    m = idx[None].repeat(mb.shape[0], 1)
                    m[torch.arange(mb.shape[0]), mb[:, 0]] = mb[:, 1]
                    res[mb[:, 0], mb[:, 1]] = wrapped(_onehot(m)).reshape(mb.shape[0], -1)
            return res.numpy()
        out["naive loop"] = naive
    return out, notes


def _grelu_method(model, transform, seq: str, length: int, batch_size: int) -> Callable[[], np.ndarray]:
    """gReLU 1.1.0's ISM_predict on a gReLU LightningModel whose network is ``model``.

    Raises ImportError without grelu. gReLU's ``predict_on_dataset`` sets the process-wide float32
    matmul precision to "medium" and its Trainer writes ``lightning_logs/`` into the working
    directory: both are contained here (precision call recorded, not applied; cwd a temp dir).
    """
    import atexit
    import contextlib
    import logging
    import shutil
    import tempfile

    from grelu.interpret.score import ISM_predict as grelu_ism
    from grelu.lightning import LightningModel

    with torch.random.fork_rng():
        lm = LightningModel(model_params={"model_type": "ConvModel", "n_tasks": 1, "stem_channels": 4,
                                          "stem_kernel_size": 3, "n_conv": 0},
                            train_params={"task": "regression", "loss": "mse"})
    lm.model = model  # activation: identity (regression, mse)
    lm.eval()

    class To3D(torch.nn.Module):  # gReLU needs (B, T, L_out); the benchmark models give (B, T)
        def forward(self, y):
            y = transform(y) if transform is not None else y
            return y[..., None] if y.ndim == 2 else y
    transform_3d = To3D()
    workdir = tempfile.mkdtemp(prefix="bench_ism_grelu_")
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    for name in ("lightning", "pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    def run() -> np.ndarray:
        original = torch.set_float32_matmul_precision
        cwd = os.getcwd()
        torch.set_float32_matmul_precision = lambda *a, **k: None
        os.chdir(workdir)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
                warnings.simplefilter("ignore")
                y = grelu_ism(seq, lm, prediction_transform=transform_3d, devices="cpu", batch_size=batch_size,
                              return_df=False)
        finally:
            os.chdir(cwd)
            torch.set_float32_matmul_precision = original
        return np.asarray(y).reshape(length, 4, -1)  # (1, L, 4, T, L_out) -> (L, 4, T * L_out)
    return run


def _fmt(ts: List[float]) -> str:
    return f"{statistics.median(ts):.3f} [{min(ts):.3f}]"


def main(argv: Optional[List[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="basset,bpnet,transformer")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of: tangermeme-fast, tangermeme-full, grelu, naive")
    ap.add_argument("--json", default=None)
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before each timed round, wait up to this many seconds for other jobs to go idle")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = set(s for s in args.skip.split(",") if s)
    results = {"threads": args.threads, "batch_size": args.batch_size, "models": {}}
    print(f"# bench_ism: CPU, {torch.get_num_threads()} threads, batch size {args.batch_size}, "
          f"torch {torch.__version__}, medians of {args.repeats} (min)")
    for label, model, length, transform in _model_specs(args.models.split(",")):
        rng = np.random.RandomState(0)
        idx = torch.as_tensor(rng.randint(0, 4, size=length))
        seq = "".join("ACGT"[i] for i in idx.tolist())
        n_mut = 3 * length
        t0 = time.perf_counter()
        plan = plan_ism(model, length, prediction_transform=transform, use_cache=False)
        capture = time.perf_counter() - t0
        plan_ism(model, length, prediction_transform=transform)  # warm the cache used by ISM_predict
        methods, notes = _methods(model, length, transform, seq, idx, args.batch_size, skip)
        # correctness first
        ref = methods["naive loop"]() if "naive loop" in methods else methods["basewise full"]()
        scale = float(np.abs(ref).max())
        errs = {}
        for name, fn in methods.items():
            y = fn()
            errs[name] = float(np.abs(y - ref).max()) / scale
        times: Dict[str, List[float]] = {k: [] for k in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                wait_quiet(args.wait_quiet)
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n## {label}: L = {length}, {n_mut} mutants, plan capture {capture:.2f} s, "
              f"predicted FLOP ratio {plan.predicted_flop_ratio:.2f}x")
        print("| method | seconds | mutants/s | vs basewise full | basewise incr. speedup | max err / scale |")
        print("|---|---|---|---|---|---|")
        for name in methods:
            print(f"| {name} | {_fmt(times[name])} | {n_mut / med[name]:,.0f} | "
                  f"{med['basewise full'] / med[name]:.2f}x | {med[name] / med['basewise incremental']:.2f}x | "
                  f"{errs[name]:.1e} |")
        print(f"| basewise incremental incl. capture (cold) | {med['basewise incremental'] + capture:.3f} | "
              f"{n_mut / (med['basewise incremental'] + capture):,.0f} | "
              f"{med['basewise full'] / (med['basewise incremental'] + capture):.2f}x | | |")
        print(f"measured full/incremental ratio {med['basewise full'] / med['basewise incremental']:.2f}x vs "
              f"predicted FLOP ratio {plan.predicted_flop_ratio:.2f}x "
              f"({100 * med['basewise full'] / med['basewise incremental'] / plan.predicted_flop_ratio:.0f}% of the floor)")
        peers = [k for k in ("tangermeme full", "gReLU", "naive loop") if k in med]
        if peers:
            print("full recompute: basewise full is " + ", ".join(
                f"{med[k] / med['basewise full']:.2f}x {k}" for k in peers) + " (time ratio, same batch size)")
        for k, v in notes.items():
            if not k.startswith("_"):
                print(f"note: {k}: {v}")
        bad = [k for k, e in errs.items() if e > 1e-5]
        if bad:
            print(f"WARNING: predictions differ by more than 1e-5 of the output scale: {bad}")
        results["models"][label] = {"length": length, "mutants": n_mut, "capture_s": capture,
                                    "predicted_flop_ratio": plan.predicted_flop_ratio,
                                    "times": times, "errors": errs, "notes": notes}
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()

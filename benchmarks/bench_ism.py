"""Saturation ISM benchmark: basewise (incremental and full) vs tangermeme vs gReLU vs a naive loop.

Runs on the CPU with 2 threads (set inside this script only), one random sequence per model, every
single-base substitution (3L mutants plus the reference), side by side at an equal batch size:

* ``basewise incremental``: ``basewise.ISM_predict(..., engine="incremental")`` (plan cached, as
  on every call after the first; the one-off capture time is reported separately);
* ``basewise full``: ``basewise.ISM_predict(..., engine="full")``;
* ``basewise auto``: the default engine choice (the plan's timed probe, measured by the first
  call and cached with the plan, picks the faster engine);
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
transform), conv + transformer (L = 1000), and at L = 4096 with the 32 central positions mutated
(96 mutants): Enformer-like (gReLU's EnformerModel structure, ``--models enformer``) and
Borzoi-like (conv tower, transformer, U-net; ``--models borzoi``). Each model's block ends with the
predicted speed-up (incremental over full: the timed probe's, and the static FLOPs + bytes model's)
next to the measured one, and the time of ``engine="auto"`` relative to the faster engine.

GPU (``--device cuda``): the model is put on the GPU first (so no call moves weights), every method
runs there at each of ``--batch-sizes`` and each of ``--dtypes`` (float32, and bfloat16 through
``dtype=`` for basewise and ``torch.autocast`` for the others), after one warm-up call per setting;
each timed call lies between two CUDA events (synchronised), and the table reports the best batch
size per method. Errors are against a float32 naive loop on the GPU. See :func:`_main_sweep`
(``--tiny`` runs that code on the CPU with a toy model: a check that it runs, for the dry run).

Usage:
    python benchmarks/bench_ism.py [--models basset,bpnet,transformer,enformer,borzoi] [--batch-size 64]
        [--repeats 3] [--quick] [--skip tangermeme-full,grelu,naive] [--json out.json] [--wait-quiet 120]
        [--device cuda --batch-sizes 256,1024,4096 --dtypes float32,bfloat16]

Example:
    >>> # python benchmarks/bench_ism.py --models basset --repeats 1
"""

from __future__ import annotations

import argparse
import copy
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
        elif name == "enformer":
            specs.append(("Enformer-like", bench_models.enformer_like(), 4096, None))
        elif name == "borzoi":
            specs.append(("Borzoi-like", bench_models.borzoi_like(), 4096, None))
        else:
            raise SystemExit(f"--models: unknown model {name!r}")
    return specs


#: mutated range per model label (default: every position): the 4096-bp models mutate the 32
#: central positions, as gReLU users do around a variant (96 mutants)
_RANGES = {"Enformer-like": (2032, 2064), "Borzoi-like": (2032, 2064)}


def _methods(model, length, transform, seq: str, idx: torch.Tensor, batch_size: int, skip: set,
             span: Optional[tuple] = None):
    start, end = span if span is not None else (0, length)
    n_pos = end - start
    wrapped = _WithTransform(model, transform).eval()
    x1 = _onehot(idx[None])  # (1, 4, L)
    out: Dict[str, Callable[[], np.ndarray]] = {}
    notes: Dict[str, str] = {}

    def bw(engine):
        def run():
            y = basewise.ISM_predict(seq, model, prediction_transform=transform, batch_size=batch_size,
                                     return_df=False, engine=engine, progress=False, start_pos=start,
                                     end_pos=end)
            return y.reshape(n_pos, 4, -1)
        return run

    out["basewise incremental"] = bw("incremental")
    out["basewise full"] = bw("full")
    out["basewise auto"] = bw("auto")

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
                                                        device="cpu", fast=fast, start=start, end=end)
                    msgs = [str(m.message) for m in w if "fast=False" in str(m.message)]
                    if msgs:
                        notes["tangermeme fast"] = "fell back to fast=False: " + msgs[0][:160]
                finally:
                    sm._FAST_MIN_SECONDS = old
                y = res.y_hat  # (1, 4, P, *out)
                return y.reshape(4, n_pos, -1).permute(1, 0, 2).numpy()
            return run

        if "tangermeme-fast" not in skip:
            out["tangermeme fast"] = tm(True)
        if "tangermeme-full" not in skip:
            out["tangermeme full"] = tm(False)
        notes["_tangermeme"] = tangermeme.__version__ if hasattr(tangermeme, "__version__") else "?"
    except ImportError:
        notes["tangermeme fast"] = notes["tangermeme full"] = "tangermeme not installed"

    if "grelu" not in skip and span is None:
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
                muts = torch.tensor([(p, a) for p in range(start, end) for a in range(4) if a != int(idx[p])])
                res = torch.empty(n_pos, 4, y0.shape[1])
                res[:] = y0
                for s in range(0, muts.shape[0], batch_size):
                    mb = muts[s:s + batch_size]
                    m = idx[None].repeat(mb.shape[0], 1)
                    m[torch.arange(mb.shape[0]), mb[:, 0]] = mb[:, 1]
                    res[mb[:, 0] - start, mb[:, 1]] = wrapped(_onehot(m)).reshape(mb.shape[0], -1)
            return res.numpy()
        out["naive loop"] = naive
    return out, notes


def _grelu_method(model, transform, seq: str, length: int, batch_size: int,
                  devices="cpu") -> Callable[[], np.ndarray]:
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
                y = grelu_ism(seq, lm, prediction_transform=transform_3d, devices=devices, batch_size=batch_size,
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
    ap.add_argument("--models", default="basset,bpnet,transformer,enformer,borzoi")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="CPU: one repeat, without tangermeme full recompute and the naive loop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of: tangermeme-fast, tangermeme-full, grelu, naive")
    ap.add_argument("--json", default=None)
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before each timed round, wait up to this many seconds for other jobs to go idle")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]: see _main_sweep")
    ap.add_argument("--tiny", action="store_true", help="the GPU sweep with a toy model at toy sizes (any device)")
    ap.add_argument("--batch-sizes", default="256,1024,4096", help="GPU only: batch sizes to sweep")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="GPU only: compute dtypes")
    args = ap.parse_args(argv)
    if args.device != "cpu" or args.tiny:
        return _main_sweep(args)
    torch.set_num_threads(args.threads)
    skip = set(s for s in args.skip.split(",") if s)
    if args.quick:
        args.repeats = 1
        skip |= {"tangermeme-full", "naive"}
    results = {"threads": args.threads, "batch_size": args.batch_size, "models": {}}
    print(f"# bench_ism: CPU, {torch.get_num_threads()} threads, batch size {args.batch_size}, "
          f"torch {torch.__version__}, medians of {args.repeats} (min)")
    for label, model, length, transform in _model_specs(args.models.split(",")):
        rng = np.random.RandomState(0)
        idx = torch.as_tensor(rng.randint(0, 4, size=length))
        seq = "".join("ACGT"[i] for i in idx.tolist())
        span = _RANGES.get(label)
        n_mut = 3 * (span[1] - span[0] if span else length)
        t0 = time.perf_counter()
        plan = plan_ism(model, length, prediction_transform=transform, use_cache=False)
        capture = time.perf_counter() - t0
        cached = plan_ism(model, length, prediction_transform=transform)  # the plan ISM_predict uses
        methods, notes = _methods(model, length, transform, seq, idx, args.batch_size, skip, span)
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
        print(f"\n## {label}: L = {length}, {n_mut} mutants"
              f"{f' (positions {span[0]}-{span[1]})' if span else ''}, plan capture {capture:.2f} s, "
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
        probe = cached.probe(args.batch_size)  # measured by the 'auto' runs above (cached with the plan)
        measured = med["basewise full"] / med["basewise incremental"]
        predicted = probe.speedup(n_mut) if probe is not None else cached.static_ratio  # job, set-up included
        print(f"predicted speed-up {predicted:.2f}x ({'timed probe' if probe is not None else 'static model'}; "
              f"static FLOPs + bytes model {cached.static_ratio:.2f}x) vs measured {measured:.2f}x: "
              f"{100 * (predicted / measured - 1):+.0f}%; auto picked "
              f"{'incremental' if cached.worthwhile else 'full'} "
              f"({med['basewise auto'] / min(med['basewise full'], med['basewise incremental']):.2f}x the faster engine's time)")
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
                                    "predicted_ratio": predicted, "static_ratio": cached.static_ratio,
                                    "measured_ratio": measured, "span": span,
                                    "times": times, "errors": errs, "notes": notes}
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


def _gpu_methods(model, length: int, transform, seq: str, idx: torch.Tensor, dev: torch.device, skip: set,
                 notes: Dict[str, str], span: Optional[tuple] = None
                 ) -> Dict[str, Callable[[int, torch.dtype], np.ndarray]]:
    """GPU runners ``(batch_size, dtype) -> (P, 4, outputs) array`` of every available method, for
    the mutated positions ``span`` = [start, end) (default: all)."""
    start, end = span if span is not None else (0, length)
    n_pos = end - start
    wrapped = _WithTransform(model, transform).eval()
    x1 = _onehot(idx[None])  # (1, 4, L), CPU: each method moves its inputs itself
    auto = lambda dt: torch.autocast(dev.type, dtype=dt, enabled=dt != torch.float32)  # noqa: E731
    out: Dict[str, Callable[[int, torch.dtype], np.ndarray]] = {}

    low: Dict[torch.dtype, torch.nn.Module] = {}  # half-precision copies of the model

    def bw(engine):
        def run(bs, dt):
            m = model
            if engine == "incremental" and dt != torch.float32:
                # the incremental engine computes in the model's own dtype (not under autocast)
                m = low.get(dt) or low.setdefault(dt, copy.deepcopy(model).to(dt))
                notes["basewise incremental"] = f"half precision: a {str(dt)[6:]} copy of the model (weights in {str(dt)[6:]})"
            y = basewise.ISM_predict(seq, m, prediction_transform=transform, batch_size=bs, return_df=False,
                                     engine=engine, progress=False, devices=dev, start_pos=start, end_pos=end,
                                     dtype=None if dt == torch.float32 else dt)
            return y.reshape(n_pos, 4, -1)
        return run

    out["basewise incremental"] = bw("incremental")
    out["basewise full"] = bw("full")
    try:
        sm = importlib.import_module("tangermeme.saturation_mutagenesis")

        def tm(fast):
            def run(bs, dt):
                old = sm._FAST_MIN_SECONDS
                sm._FAST_MIN_SECONDS = 0.0
                try:
                    with warnings.catch_warnings(), auto(dt):
                        warnings.simplefilter("ignore")
                        res = sm.saturation_mutagenesis(wrapped, x1, batch_size=bs, raw_outputs=True,
                                                        device=str(dev), fast=fast, start=start, end=end)
                finally:
                    sm._FAST_MIN_SECONDS = old
                return res.y_hat.float().reshape(4, n_pos, -1).permute(1, 0, 2).cpu().numpy()
            return run

        for key, fast in (("tangermeme-fast", True), ("tangermeme-full", False)):
            if key not in skip:
                out[key.replace("-", " ")] = tm(fast)
    except ImportError:
        notes["tangermeme"] = "tangermeme not installed"
    if "grelu" not in skip and span is None:
        try:
            importlib.import_module("grelu.interpret.score")
        except ImportError:
            notes["gReLU"] = "grelu not installed (not a dependency); not run"
        else:
            def grelu_run(bs, dt):
                with auto(dt):
                    return _grelu_method(model, transform, seq, length, bs,
                                         devices=dev.index if dev.type == "cuda" else "cpu")()
            out["gReLU"] = grelu_run
    if "naive" not in skip:
        def naive(bs, dt):
            with torch.inference_mode(), auto(dt):
                i = idx.to(dev)
                y0 = wrapped(_onehot(i[None].cpu()).to(dev)).float().reshape(1, -1)
                muts = torch.tensor([(p, a) for p in range(start, end) for a in range(4) if a != int(idx[p])],
                                    device=dev)
                res = y0.expand(n_pos * 4, -1).reshape(n_pos, 4, -1).clone()
                eye = torch.eye(4, device=dev)
                for s0 in range(0, muts.shape[0], bs):
                    mb = muts[s0:s0 + bs]
                    m = i[None].repeat(mb.shape[0], 1)
                    m[torch.arange(mb.shape[0], device=dev), mb[:, 0]] = mb[:, 1]
                    res[mb[:, 0] - start, mb[:, 1]] = wrapped(eye[m].transpose(1, 2).contiguous()).float().reshape(
                        mb.shape[0], -1)
            return res.cpu().numpy()
        out["naive loop"] = naive
    return out


def _device_time(fn: Callable[[], object], dev: torch.device) -> float:
    """Seconds between two CUDA events around ``fn()`` (all prior work finished first); wall clock
    on the CPU."""
    if dev.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    fn()
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1) / 1e3


def _tiny_spec():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(4, 16, 7, padding=3), torch.nn.ReLU(), torch.nn.MaxPool1d(4),
                                torch.nn.Conv1d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 15, 2)).eval()
    return [("tiny CNN", model, 60, None)]


def _main_sweep(args) -> Dict:
    """The GPU benchmark: per model and dtype, every method at every batch size (one warm-up call,
    then ``--repeats`` timed calls), errors against a float32 naive loop, best batch size per
    method. An out-of-memory batch size is recorded and skipped. With ``--tiny``: a toy model, the
    first two batch sizes, one repeat (also on the CPU, with wall-clock timing)."""
    from basewise import ops

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is available")
    if dev.type == "cuda":
        dev = torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
    else:
        torch.set_num_threads(args.threads)
    skip = set(s for s in args.skip.split(",") if s)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",") if d]
    if args.tiny:
        sizes, args.repeats = [16, 64], 1
    kernels = ops.fallback_reason(dev)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    results = {"device": str(dev), "gpu": gpu, "batch_sizes": sizes, "dtypes": [str(d) for d in dtypes],
               "native_kernels": kernels is None, "fallback_reason": kernels, "torch": torch.__version__,
               "models": {}}
    print(f"# bench_ism: {gpu}, torch {torch.__version__}, basewise "
          f"{'native kernels' if kernels is None else 'PLAIN-PYTORCH FALLBACK: ' + kernels}; "
          f"batch sizes {sizes}, medians of {args.repeats} timed calls after a warm-up "
          f"({'CUDA events' if dev.type == 'cuda' else 'wall clock'})")
    for label, model, length, transform in (_tiny_spec() if args.tiny else _model_specs(args.models.split(","))):
        model = model.to(dev).eval()
        rng = np.random.RandomState(0)
        idx = torch.as_tensor(rng.randint(0, 4, size=length))
        seq = "".join("ACGT"[i] for i in idx.tolist())
        span = _RANGES.get(label)
        n_mut = 3 * (span[1] - span[0] if span else length)
        notes: Dict[str, str] = {}
        methods = _gpu_methods(model, length, transform, seq, idx, dev, skip, notes, span)
        t0 = time.perf_counter()
        plan = plan_ism(model, length, prediction_transform=transform, device=dev, use_cache=False)
        capture = time.perf_counter() - t0
        ref = (methods["naive loop"] if "naive loop" in methods else methods["basewise full"])(sizes[0], torch.float32)
        scale = float(np.abs(ref).max()) or 1.0
        res_m: Dict[str, Dict] = {}
        for dt in dtypes:
            dname = str(dt).replace("torch.", "")
            plan_ism(model, length, prediction_transform=transform, device=dev, dtype=dt)  # warm the cache
            rows = {}
            for name, fn in methods.items():
                per_bs, err = {}, None
                for bs in sizes:
                    try:
                        y = fn(bs, dt)  # warm-up, and the correctness check
                        err = float(np.abs(y - ref).max()) / scale if err is None else err
                        per_bs[bs] = statistics.median(_device_time(lambda: fn(bs, dt), dev)
                                                       for _ in range(args.repeats))
                    except torch.cuda.OutOfMemoryError:
                        per_bs[bs] = None
                        torch.cuda.empty_cache()
                    except Exception as e:  # noqa: BLE001 - one failing method must not end a GPU run
                        per_bs[bs] = None
                        notes[f"{name} ({str(dt)[6:]}, batch {bs})"] = f"failed: {type(e).__name__}: {e}"[:300]
                ok = {b: t for b, t in per_bs.items() if t is not None}
                best = min(ok, key=ok.get) if ok else None
                rows[name] = {"per_batch_s": per_bs, "best_batch": best, "best_s": ok.get(best), "error": err}
            full = rows.get("basewise full", {}).get("best_s")
            print(f"\n## {label}, {dname}: L = {length}, {n_mut} mutants"
                  f"{f' (positions {span[0]}-{span[1]})' if span else ''}, plan capture {capture:.2f} s, "
                  f"predicted FLOP ratio {plan.predicted_flop_ratio:.2f}x")
            print("| method | best batch | seconds | mutants/s | vs basewise full | mutants/s per batch size "
                  "| max err / scale |")
            print("|---|---|---|---|---|---|---|")
            for name, r in rows.items():
                sweep = ", ".join(f"{b}: {n_mut / t:,.0f}" if t else f"{b}: OOM" for b, t in r["per_batch_s"].items())
                if r["best_s"] is None:
                    print(f"| {name} | - | OOM | | | {sweep} | |")
                    continue
                print(f"| {name} | {r['best_batch']} | {r['best_s']:.4f} | {n_mut / r['best_s']:,.0f} | "
                      f"{(full / r['best_s']) if full else float('nan'):.2f}x | {sweep} | {r['error']:.1e} |")
            for k, v in notes.items():
                print(f"note: {k}: {v}")
            res_m[dname] = rows
            sys.stdout.flush()
        results["models"][label] = {"length": length, "mutants": n_mut, "capture_s": capture,
                                    "predicted_flop_ratio": plan.predicted_flop_ratio, "dtypes": res_m,
                                    "notes": notes}
        model.cpu()
        if args.json:  # after every model: a run stopped at its time limit keeps what it measured
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    main()

"""Attribution benchmark: basewise.get_attributions vs gReLU's one-sequence-at-a-time loop.

For every model and method, on ``--n-seqs`` random sequences (64 by default; ``--n-heavy`` for
integrated gradients and deepshap on the large models, whose 50 scaled copies or 2 x 20
sequence/reference pairs per sequence would take minutes on a 2-core CPU):

* ``gReLU``: gReLU 1.1.0's own ``get_attributions`` when grelu is installed (it only duck-types
  the LightningModel, so it runs on the stand-in); otherwise its code path reproduced: captum's
  ``Saliency`` (``abs=False``) / ``InputXGradient`` / ``IntegratedGradients`` wrapping the
  LightningModel (stand-in from ``tests/_grelu_standins.py``), one (1, 4, L) slice per call
  under ``no_grad``, results stacked; for deepshap, ``add_transform``,
  ``tangermeme.deep_lift_shap`` on the whole LightningModel, ``.numpy(force=True)``,
  ``reset_transform``.
* ``tangermeme``: ``tangermeme.deep_lift_shap`` called directly on the LightningModel (deepshap
  only).
* ``basewise``: ``get_attributions`` with its defaults (batched captum calls; for deepshap the
  model with its activation as a hooked module).

Before timing, basewise is checked against the gReLU path and both against a float64 run of the
same model (max |difference| / max |reference|). Float32 gradients of ReLU networks can differ by
1e-2 of the scale at single positions where the float32 rounding of the forward pass puts a ReLU
input on the other side of 0, whatever the batch size (gReLU's batch-1 loop included). For
deepshap, whose numbers differ by design on exp/sigmoid models, the check is the DeepLIFT
summation error of both: max |sum of attributions - mean output difference to the references| /
max |difference|.

Times are medians (minimum in brackets) of round-robin runs after one warm-up: at least
``--repeats``, more until each method has run ``--min-time`` seconds, since a fast method's
timings vary by +-30 % between runs on a shared 2-core machine. The ratio is gReLU / basewise
(> 1: basewise faster), from wall time and, as a check on a shared machine where other jobs' load
inflates wall times, from this process's CPU time. Threads are set to ``--threads`` in this
script only. Run with ``--device cuda`` on a GPU machine to compare.

Models (random weights, eval mode, LightningModel stand-ins):

* ``convmodel``: gReLU's default ConvModel (stem 64 channels kernel 15, two conv blocks of 64
  channels kernel 5, ReLU, average pooling, one task), Poisson (``torch.exp``) activation, L = 1000;
  the spec's peer-timing model.
* ``basset``: ``models.basset_like(1)`` (L = 1000), binary (``torch.sigmoid``) activation.
* ``bpnet``: ``models.bpnet_like`` counts head (out_len 800 so that L = 1000 fits), exp activation.

Usage:
    python benchmarks/bench_attr.py [--models convmodel,basset,bpnet] [--methods saliency,...]
        [--n-seqs 64] [--n-heavy 8] [--repeats 3] [--min-time 2] [--max-repeats 40]
        [--threads 2] [--device cpu] [--wait-quiet 0]
        [--json out.json]

Example:
    >>> # python benchmarks/bench_attr.py --models convmodel --repeats 1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import models as bench_models  # noqa: E402
from _timing import wait_quiet  # noqa: E402
from _grelu_standins import StandInLightningModel  # noqa: E402

from basewise.attribution import get_attributions  # noqa: E402

METHODS = ("saliency", "inputxgradient", "integratedgradients", "deepshap")
HEAVY = ("integratedgradients", "deepshap")


class ConvModel(nn.Module):
    """gReLU's default ConvModel shape: (B, 4, L) -> (B, 1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(4, 64, 15, padding=7)
        self.block1 = nn.Sequential(nn.Conv1d(64, 64, 5, padding=2), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv1d(64, 64, 5, padding=2), nn.ReLU())
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Conv1d(64, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.act(self.stem(x))))
        return self.head(self.pool(x))


class ThreeD(nn.Module):
    """A (B, T) network (or a tuple-output one with a transform) as gReLU's (B, T, 1)."""

    def __init__(self, net: nn.Module, transform: Optional[Callable] = None) -> None:
        super().__init__()
        self.net = net
        self._t = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self._t is not None:
            y = self._t(y)
        return y[..., None]  # (B, T, 1)


def model_specs(names: List[str]):
    out = []
    for name in names:
        torch.manual_seed(0)
        if name == "convmodel":
            out.append(("ConvModel (exp)", StandInLightningModel(ConvModel().eval(), "exp"), 1000, False))
        elif name == "basset":
            net = ThreeD(bench_models.basset_like(1, length=1000))
            out.append(("Basset-like (sigmoid)", StandInLightningModel(net.eval(), "sigmoid"), 1000, True))
        elif name == "bpnet":
            net = ThreeD(bench_models.bpnet_like(out_len=800), bench_models.bpnet_counts_transform)
            out.append(("BPNet-like counts (exp)", StandInLightningModel(net.eval(), "exp"), 1000, True))
        else:
            raise SystemExit(f"--models: unknown model {name!r}")
    return out


def grelu_path(lm, x: torch.Tensor, method: str, device: str, n_shuffles: int, seed: int):
    """gReLU 1.1.0's get_attributions (the real one when grelu is installed: it only duck-types
    the LightningModel), else its code path (spec section 3.1) reproduced."""
    try:
        from grelu.interpret.score import get_attributions as grelu_get_attributions
    except ImportError:
        grelu_get_attributions = None
    if grelu_get_attributions is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = grelu_get_attributions(lm, x, device=device, method=method, n_shuffles=n_shuffles,
                                         seed=seed)
        lm.to("cpu")
        return out
    from captum.attr import InputXGradient, IntegratedGradients, Saliency
    from tangermeme.deep_lift_shap import deep_lift_shap

    lm.add_transform(None)
    lm.eval()
    if method == "deepshap":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = deep_lift_shap(lm, X=x, n_shuffles=n_shuffles, hypothetical=False, device=device,
                                 random_state=seed).numpy(force=True)
    else:
        cls = {"saliency": Saliency, "inputxgradient": InputXGradient,
               "integratedgradients": IntegratedGradients}[method]
        kw = {"abs": False} if method == "saliency" else {}
        attributer = cls(lm.to(device))
        res = []
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captum's "did not already require gradients", per sequence
            for i in range(len(x)):
                res.append(attributer.attribute(x[i:i + 1].to(device), **kw).cpu().numpy())
        out = np.vstack(res)
        lm.to("cpu")
    lm.reset_transform()
    return out


def summation_error(lm, x: torch.Tensor, attr: np.ndarray, n_shuffles: int, seed: int) -> float:
    """DeepLIFT summation error relative to the output differences (references re-drawn exactly as
    tangermeme draws them: reference k of sequence i is dinucleotide_shuffle(x_i, seed + k))."""
    from tangermeme.ersatz import dinucleotide_shuffle

    with torch.no_grad():
        y = lm(x).reshape(len(x))
        diffs = []
        for i in range(len(x)):
            refs = torch.cat([dinucleotide_shuffle(x[i:i + 1], n=1, random_state=seed + k)[:, 0]
                              for k in range(n_shuffles)])
            diffs.append((y[i] - lm(refs).reshape(n_shuffles)).mean())
    diffs = torch.stack(diffs).numpy()
    return float(np.abs(attr.sum(axis=(1, 2)) - diffs).max() / max(np.abs(diffs).max(), 1e-30))


def main(argv: Optional[List[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="convmodel,basset,bpnet")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--n-seqs", type=int, default=64)
    ap.add_argument("--n-heavy", type=int, default=8,
                    help="sequences for integrated gradients and deepshap on basset and bpnet")
    ap.add_argument("--n-shuffles", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="minimum number of timed runs")
    ap.add_argument("--min-time", type=float, default=2.0,
                    help="repeat (up to --max-repeats) until every method has run this many seconds")
    ap.add_argument("--max-repeats", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before each timed run wait up to this many seconds until no other process "
                         "is runnable (for shared machines); 0 disables")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    seed = 0
    try:
        import grelu  # noqa: F401
        grelu_note = "gReLU column: grelu's own get_attributions on the stand-in LightningModel"
    except ImportError:
        grelu_note = "grelu not installed: its code path is reproduced with captum/tangermeme directly"
    on_gpu = args.device.startswith("cuda") or args.device.isdigit()
    device = int(args.device) if args.device.isdigit() else args.device  # gReLU: a GPU index
    dev_name = torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu"
    print(f"# bench_attr: {args.device} ({dev_name}), {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, medians (min) of >= {args.repeats} runs and >= {args.min_time} s; "
          f"{grelu_note}")
    results: Dict = {"device": args.device, "threads": args.threads, "rows": []}
    print("\n| model | method | seqs | gReLU s | tangermeme s | basewise s | gReLU / basewise | "
          "same, CPU time | check |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, lm, length, heavy_model in model_specs(args.models.split(",")):
        for method in methods:
            n = args.n_heavy if (heavy_model and method in HEAVY) else args.n_seqs
            g = torch.Generator().manual_seed(1)
            idx = torch.randint(0, 4, (n, length), generator=g)
            x = torch.nn.functional.one_hot(idx, 4).permute(0, 2, 1).float().contiguous()  # (n, 4, L)
            warned: List[str] = []

            def basewise_run():
                with warnings.catch_warnings(record=True) as rec:
                    warnings.simplefilter("always")
                    out = get_attributions(lm, x, device=device, method=method,
                                           n_shuffles=args.n_shuffles, seed=seed)
                warned.extend(str(w.message)[:40] for w in rec)
                return out

            fns: Dict[str, Callable[[], np.ndarray]] = {
                "gReLU": lambda: grelu_path(lm, x, method, device, args.n_shuffles, seed),
                "basewise": basewise_run,
            }
            if method == "deepshap":
                from tangermeme.deep_lift_shap import deep_lift_shap

                def tm():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        return deep_lift_shap(lm, x, n_shuffles=args.n_shuffles, device=device,
                                              random_state=seed).numpy()
                fns["tangermeme"] = tm
            outs = {k: f() for k, f in fns.items()}  # warm-up and correctness
            if method == "deepshap":
                e_g = summation_error(lm, x, outs["gReLU"], args.n_shuffles, seed)
                e_b = summation_error(lm, x, outs["basewise"], args.n_shuffles, seed)
                check = f"sum err gReLU {e_g:.1e}, basewise {e_b:.1e}"
                if warned:
                    check += "; basewise: tangermeme warned (" + warned[0].strip() + ")"
            else:
                def err(a, ref):
                    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))

                ref64 = get_attributions(copy.deepcopy(lm).double(), x.double(), method=method,
                                         batch_size=1, device=device)
                check = (f"vs gReLU {err(outs['basewise'], outs['gReLU']):.1e}; vs float64: gReLU "
                         f"{err(outs['gReLU'], ref64):.1e}, basewise {err(outs['basewise'], ref64):.1e}; "
                         f"{outs['basewise'].dtype}")
            times: Dict[str, List[float]] = {k: [] for k in fns}
            cpu: Dict[str, List[float]] = {k: [] for k in fns}
            rep = 0
            while rep < args.repeats or (min(sum(v) for v in times.values()) < args.min_time
                                         and rep < args.max_repeats):
                rep += 1
                for k, f in fns.items():
                    wait_quiet(args.wait_quiet)
                    c0, t0 = time.process_time(), time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
                    cpu[k].append(time.process_time() - c0)
            med = {k: statistics.median(v) for k, v in times.items()}
            lo = {k: min(v) for k, v in times.items()}
            cpu_ratio = statistics.median(cpu["gReLU"]) / statistics.median(cpu["basewise"])

            def cell(k):
                return f"{med[k]:.3f} [{lo[k]:.3f}]" if k in med else "–"

            ratio = med["gReLU"] / med["basewise"]
            print(f"| {label} | {method} | {n} | {cell('gReLU')} | {cell('tangermeme')} | "
                  f"{cell('basewise')} | {ratio:.2f}x | {cpu_ratio:.2f}x | {check} |", flush=True)
            results["rows"].append({"model": label, "method": method, "n": n, "median": med, "min": lo,
                                    "ratio": ratio, "cpu_ratio": cpu_ratio, "check": check})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()

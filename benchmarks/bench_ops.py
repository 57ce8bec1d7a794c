"""Throughput of basewise's native ops against the best plain-PyTorch way and a memcpy, CPU or GPU.

For every op: build the inputs, check that basewise's result equals every plain-PyTorch variant
exactly, then time them round-robin (warm-up first; median of the repeats; fresh inputs prepared
outside the timed region for in-place ops). The table gives medians in ms, rates in GB/s of the
bytes each op writes (mutate: the one-hot batch; compare_: the predictions updated in place;
scatter_/fill_reference_: the slots written; window ops: their outputs), the speed-up of basewise
over the fastest plain-PyTorch variant, and basewise's rate as a fraction of a memcpy
(``dst.copy_(src)``, both pre-allocated and touched) of the same number of bytes.

Allocating rows ("new tensor") include the page faults of a fresh output, which on this VM cost
more than the writes; "into out=" rows write into a reused buffer, as an ISM loop over batches of
one size does.

Targets (issue 2), checked on the "mutate float32, new tensor" row: 3000 mutants of length 1000 at
least 3x the plain-PyTorch way (which returns a new tensor) and at least half the memcpy rate. The
"into out=" rows compare with plain PyTorch writing into a reused buffer too (index_select(out=)
then index_put_): both are then bound by store bandwidth, so expect about 1x there.

GPU (``--device cuda``): the same cases and checks with every tensor on the GPU; each call is timed
with CUDA events after warm-up (a synchronisation after each round, none inside the timed region;
set-up copies are queued before the start event), the memcpy column is a device-to-device
``copy_`` of the same bytes (the GPU's memory bandwidth), and basewise's ops run with
``check=False``, as in ISM's batch loop (the value checks cost one host synchronisation per call).
The CPU targets are still flagged on the GPU but were set for the CPU.

Usage: ``python benchmarks/bench_ops.py [--repeats 15] [--threads 2] [--quick] [--device cuda]
[--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from basewise import ops

Fn = Callable[[], object]


@dataclass
class Case:
    name: str
    size: str
    nbytes: int
    ours: Fn
    torch_variants: Dict[str, Fn]
    setup: Optional[Callable[[], None]] = None  # untimed, run before every call (in-place ops)
    result: Optional[Callable[[object], torch.Tensor]] = None  # what to compare
    target: bool = False
    times: Dict[str, List[float]] = field(default_factory=dict)


def onehot_ref(ref: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return F.one_hot(ref.long(), 5)[..., :4].permute(0, 2, 1).to(dtype).contiguous()  # (B, 4, L)


def build_cases(quick: bool, device: str = "cpu", tiny: bool = False) -> List[Case]:
    """The benchmark cases with their inputs on ``device`` (random inputs drawn on the CPU, so both
    devices see the same numbers); on CUDA basewise runs with check=False. ``tiny``: toy sizes
    that only exercise the code (gpu_check.sh --dry-run)."""
    g = torch.Generator().manual_seed(0)
    cases: List[Case] = []
    dev = torch.device(device)
    chk = dev.type == "cpu"  # value checks cost a host synchronisation per call on a GPU
    d = lambda t: t.to(dev)  # noqa: E731

    # ---- mutate: 3000 mutants of length 1000 (saturation of 1000 positions of one sequence)
    L = 100 if tiny else 1000
    ref = d(torch.randint(0, 4, (1, L), generator=g, dtype=torch.uint8))
    mut = ops.enumerate_mutants(ref, 0, L)  # (3000, 3)
    M = len(mut)
    seq, pos, base = mut.unbind(1)
    ar = torch.arange(M, device=dev)
    ar4 = torch.arange(4, dtype=torch.uint8, device=dev).view(1, 4, 1)

    for dtype in (torch.float32, torch.bfloat16):
        oh = onehot_ref(ref, dtype)
        one = torch.ones((), dtype=dtype, device=dev)
        nbytes = M * 4 * L * oh.element_size()
        dn = str(dtype).replace("torch.", "")

        def index_put(oh=oh, one=one):
            x = oh[seq]  # (M, 4, L) copy of the reference one-hot
            x[ar, :, pos] = 0
            x[ar, base, pos] = one
            return x

        def eq_broadcast(dtype=dtype):
            s = ref[seq]  # (M, L)
            s[ar, pos] = base.to(torch.uint8)
            return (s.unsqueeze(1) == ar4).to(dtype)

        def one_hot(dtype=dtype):
            s = ref[seq].long()
            s[ar, pos] = base
            return F.one_hot(s, 5)[..., :4].permute(0, 2, 1).to(dtype).contiguous()

        cases.append(Case(f"mutate {dn}, new tensor", f"M={M}, L={L}", nbytes,
                          lambda dtype=dtype: ops.mutate(ref, mut, dtype, check=chk),
                          {"index+index_put": index_put, "eq-broadcast": eq_broadcast,
                           "F.one_hot": one_hot}, target=dtype == torch.float32))

        buf, buf_t = torch.zeros(M, 4, L, dtype=dtype, device=dev), torch.zeros(M, 4, L, dtype=dtype, device=dev)
        bool_buf = torch.zeros(M, 4, L, dtype=torch.bool, device=dev)

        def index_put_out(oh=oh, one=one, buf_t=buf_t):
            torch.index_select(oh, 0, seq, out=buf_t)
            buf_t[ar, :, pos] = 0
            buf_t[ar, base, pos] = one
            return buf_t

        def eq_out(buf_t=buf_t, bool_buf=bool_buf):
            s = ref[seq]
            s[ar, pos] = base.to(torch.uint8)
            torch.eq(s.unsqueeze(1), ar4, out=bool_buf)
            return buf_t.copy_(bool_buf)

        cases.append(Case(f"mutate {dn}, into out=", f"M={M}, L={L}", nbytes,
                          lambda dtype=dtype, buf=buf: ops.mutate(ref, mut, dtype, out=buf, check=chk),
                          {"index_select(out=)+index_put_": index_put_out, "eq(out=)+copy_": eq_out}))

    # ---- mutate_window: windows of 101 around each mutated position
    W = 101
    offset = pos - W // 2
    ohp = F.pad(onehot_ref(ref), (W, W))  # (1, 4, L + 2W)
    cols = offset.view(M, 1) + torch.arange(W, device=dev) + W

    def window_gather():
        x = ohp[seq.view(M, 1), :, cols].permute(0, 2, 1).contiguous()  # (M, 4, W)
        j = pos - offset
        x[ar, :, j] = 0
        x[ar, base, j] = 1
        return x

    wbuf = torch.empty(M, 4, W, device=dev)
    cases.append(Case("mutate_window f32, into out=", f"M={M}, W={W}", M * 4 * W * 4,
                      lambda: ops.mutate_window(ref, mut, offset, W, out=wbuf, check=chk),
                      {"pad+advanced index+index_put": window_gather}))

    # ---- compare_: predictions (B, P, 4, S)
    B, P, S = (2, 20, 8) if tiny else (8, 1000 if not quick else 200, 256)
    preds0 = d(torch.rand(B, P, 4, S, generator=g) + 0.5)
    rpred = d(torch.rand(B, S, generator=g) + 0.5)
    work = {"x": preds0.clone()}

    def fresh_preds():
        work["x"].copy_(preds0)

    r5 = rpred.view(B, 1, 1, S)
    torch_cmp = {
        "subtract": lambda: work["x"].sub_(r5),
        "divide": lambda: work["x"].div_(r5),
        "log2FC": lambda: work["x"].div_(r5).log2_(),
    }
    for kind, fn in torch_cmp.items():
        cases.append(Case(f"compare_ {kind}", f"B={B}, P={P}, S={S}", preds0.numel() * 4,
                          lambda kind=kind: ops.compare_(work["x"], rpred, kind),
                          {"in-place broadcast": fn}, setup=fresh_preds,
                          result=lambda _: work["x"]))

    # ---- scatter_: M mutant predictions (M, S) into (1, P, 4, S)
    S2 = 32 if tiny else 1024
    out = torch.zeros(1, L, 4, S2, device=dev)
    vals = d(torch.randn(M, S2, generator=g))
    flat = (seq * L + pos) * 4 + base

    def zero_out():
        out.zero_()

    cases.append(Case("scatter_ f32", f"M={M}, S={S2}", M * S2 * 4,
                      lambda: ops.scatter_(out, vals, mut, 0, check=chk),
                      {"index_put_": lambda: out.index_put_((seq, pos, base), vals),
                       "index_copy_": lambda: out.view(-1, S2).index_copy_(0, flat, vals)},
                      setup=zero_out, result=lambda _: out))
    vals16 = vals.to(torch.bfloat16)
    cases.append(Case("scatter_ bf16 -> f32", f"M={M}, S={S2}", M * S2 * 4,
                      lambda: ops.scatter_(out, vals16, mut, 0, check=chk),
                      {"index_put_(.float())": lambda: out.index_put_((seq, pos, base), vals16.float())},
                      setup=zero_out, result=lambda _: out))

    # ---- fill_reference_: (B, P, 4, S)
    refB = d(torch.randint(0, 5, (B, L), generator=g, dtype=torch.uint8))
    outB = torch.zeros(B, P, 4, S, device=dev)

    def fill_torch():
        rw = refB[:, :P]
        bb, pp = (rw < 4).nonzero(as_tuple=True)
        outB[bb, pp, rw[bb, pp].long()] = rpred[bb]
        return outB

    n_fill = int((refB[:, :P] < 4).sum()) * S * 4
    cases.append(Case("fill_reference_", f"B={B}, P={P}, S={S}", n_fill,
                      lambda: ops.fill_reference_(outB, rpred, refB, 0, check=chk),
                      {"nonzero+index_put_": fill_torch},
                      setup=lambda: outB.zero_(), result=lambda _: outB))

    # ---- window ops (incremental engine): activations (1, C, Lx)
    C, Lx, Wg = 8 if tiny else 64, L, 32
    x = d(torch.randn(1, C, Lx, generator=g))
    sidx = torch.zeros(M, dtype=torch.int64, device=dev)
    goff = pos - Wg // 2
    xp = F.pad(x, (Wg, Wg))
    gcols = goff.view(M, 1) + torch.arange(Wg, device=dev) + Wg

    cases.append(Case("gather_windows f32", f"M={M}, C={C}, W={Wg}", M * C * Wg * 4,
                      lambda: ops.gather_windows(x, sidx, goff, Wg, check=chk),
                      {"pad+advanced index": lambda: xp[sidx.view(M, 1), :, gcols].permute(0, 2, 1).contiguous()}))

    Ms = 128
    soff = d(torch.randint(0, Lx - Wg, (Ms,), generator=g))
    swin = d(torch.randn(Ms, C, Wg, generator=g))
    scols = (soff.view(Ms, 1, 1) + torch.arange(Wg, device=dev)).expand(Ms, C, Wg)
    cases.append(Case("splice_windows f32", f"M={Ms}, C={C}, Lx={Lx}, W={Wg}", Ms * C * Lx * 4,
                      lambda: ops.splice_windows(x, sidx[:Ms], soff, swin, check=chk),
                      {"index_select+scatter_": lambda: x[sidx[:Ms]].scatter_(2, scols, swin)}))

    # conv_delta_: K = 15 stem, stride 1, padding 7; windows of W = 32 holding every tap
    K, pad, Wc = 15, 7, 32
    weight = d(torch.randn(C, 4, K, generator=g))
    oo = pos + pad - (K - 1) - 8  # window starts 8 before the first affected output
    pre0 = d(torch.randn(M, C, Wc, generator=g))
    pre = pre0.clone()
    old = ref[0, pos].long()
    jidx = (pos + pad - oo).view(M, 1, 1) - torch.arange(K, device=dev).view(1, 1, K)  # (M, 1, K) columns

    def conv_torch():
        delta = weight[:, base, :].permute(1, 0, 2) - weight[:, old, :].permute(1, 0, 2)  # (M, C, K)
        return pre.scatter_add_(2, jidx.expand(M, C, K), delta)

    cases.append(Case("conv_delta_ f32", f"M={M}, C={C}, K={K}, W={Wc}", M * C * K * 4,
                      lambda: ops.conv_delta_(pre, weight, mut, ref, oo, 1, pad, 1, check=chk),
                      {"gather+scatter_add_": conv_torch},
                      setup=lambda: pre.copy_(pre0), result=lambda _: pre))
    return cases


def check(case: Case) -> None:
    """basewise's result equals every plain-PyTorch variant's (exactly, bar float rounding of
    log2 and of scatter_add's order)."""
    def run(fn):
        if case.setup:
            case.setup()
        r = fn()
        r = case.result(r) if case.result else r
        return r.clone()

    want = run(case.ours)
    for name, fn in case.torch_variants.items():
        got = run(fn)
        if "log2FC" in case.name or "conv_delta" in case.name:
            torch.testing.assert_close(got.float(), want.float(), rtol=2e-6, atol=1e-5, equal_nan=True)
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m: f"{case.name} vs {name}: {m}")


def time_cases(cases: List[Case], repeats: int, device: str = "cpu") -> None:
    """Median-ready times per variant: wall clock on the CPU; on CUDA the time between two CUDA
    events around the call (set-up queued before the first), synchronised after each round."""
    cuda = torch.device(device).type == "cuda"
    for case in cases:
        fns = {"basewise": case.ours, **case.torch_variants}
        src = torch.rand(case.nbytes // 4 + 1, device=device)
        dst = torch.empty_like(src)
        fns["memcpy"] = lambda src=src, dst=dst: dst.copy_(src)
        case.times = {k: [] for k in fns}
        for i in range(repeats + 2):  # 2 warm-up rounds, round-robin
            events = []
            for k, fn in fns.items():
                if case.setup and k != "memcpy":
                    case.setup()
                if cuda:
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    r = fn()
                    e1.record()
                    events.append((k, e0, e1))
                    del r
                    continue
                t0 = time.perf_counter()
                r = fn()
                dt = time.perf_counter() - t0
                del r
                if i >= 2:
                    case.times[k].append(dt)
            if cuda:
                torch.cuda.synchronize()
                if i >= 2:
                    for k, e0, e1 in events:
                        case.times[k].append(e0.elapsed_time(e1) / 1e3)


def report(cases: List[Case], threads: int, repeats: int, device: str = "cpu") -> str:
    med = lambda v: statistics.median(v)
    if torch.device(device).type == "cuda":
        reason = ops.fallback_reason(device)
        where = (f"GPU {torch.cuda.get_device_name(device)}, CUDA-event timing, basewise check=False, "
                 + ("native kernels" if reason is None else f"PLAIN-PYTORCH FALLBACK ({reason})"))
    else:
        where = f"{threads} threads, {platform.processor() or platform.machine()}"
    lines = [
        f"torch {torch.__version__}, basewise build {ops.build_info()['cuda'] and 'CUDA+' or ''}"
        f"{'OpenMP' if ops.build_info()['openmp'] else 'no OpenMP'}, {where}, "
        f"median of {repeats} round-robin repeats",
        "",
        "| op | size | MB written | basewise ms | basewise GB/s | best plain PyTorch | torch ms | torch GB/s "
        "| speed-up | memcpy GB/s | basewise / memcpy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        t_ours = med(c.times["basewise"])
        best = min(c.torch_variants, key=lambda k: med(c.times[k]))
        t_torch = med(c.times[best])
        t_mem = med(c.times["memcpy"])
        gb = lambda t: c.nbytes / t / 1e9
        flag = ""
        if c.target:
            ok = t_torch / t_ours >= 3 and gb(t_ours) >= 0.5 * gb(t_mem)
            flag = " (target met)" if ok else " (target MISSED)"
        lines.append(
            f"| {c.name}{flag} | {c.size} | {c.nbytes / 1e6:.1f} | {t_ours * 1e3:.2f} | {gb(t_ours):.1f} "
            f"| {best} | {t_torch * 1e3:.2f} | {gb(t_torch):.1f} | {t_torch / t_ours:.1f}x "
            f"| {gb(t_mem):.1f} | {gb(t_ours) / gb(t_mem):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smaller compare_ inputs, 5 repeats")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    p.add_argument("--tiny", action="store_true", help="toy sizes, 1 repeat: only checks that it runs")
    p.add_argument("--json", default=None, help="also write the medians (seconds) and sizes here")
    a = p.parse_args(argv)
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {a.device}: no CUDA device is available")
    torch.set_num_threads(a.threads)
    repeats = 1 if a.tiny else 5 if a.quick else a.repeats
    with torch.inference_mode():
        cases = build_cases(a.quick, a.device, a.tiny)
        for c in cases:
            check(c)
        time_cases(cases, repeats, a.device)
    print(report(cases, a.threads, repeats, a.device))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": a.device, "threads": a.threads, "repeats": repeats, "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name(a.device) if torch.device(a.device).type == "cuda" else None,
                       "cases": [{"name": c.name, "size": c.size, "bytes": c.nbytes,
                                  "median_s": {k: statistics.median(v) for k, v in c.times.items()}}
                                 for c in cases]}, f, indent=1)


if __name__ == "__main__":
    main()

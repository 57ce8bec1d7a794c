"""The ``basewise`` command line (also ``python -m basewise``).

Sub-commands:
    demo       ISM of the bundled sequence with the bundled motif model, printed as a summary
               (``--plot FILE.png`` also saves the ISM logo and heatmap).
    ism        ISM of many sequences (FASTA, or BED + genome FASTA) into an HDF5 results file.
    attribute  Attributions of many sequences into an HDF5 results file.
    attention  Attention maps of many sequences into an HDF5 results file.
    modisco    Export an attribution results file as TF-MoDISco (modisco-lite) inputs.
    summarize  Per-region or per-position summaries of a results file in genome coordinates.
    export-bigwig  A per-position score of a results file as bigWig or bedGraph, for genome browsers.

``ism`` and ``attribute`` process the regions ``--chunk-size`` at a time and write each chunk
to the results file (:mod:`basewise.results`) before the next one starts, so memory does not
grow with the number of regions. Running the same command again after an interruption resumes:
finished regions are skipped; a results file written with other arguments or regions is refused.

The model (``-m/--model``) is one of: a TorchScript file (``torch.jit.save``), a ``torch.export``
program (``.pt2``), a gReLU checkpoint (``.ckpt``, needs gReLU installed), or
``module:function`` / ``path/to/file.py:function`` naming a function that returns the model.

Errors in the inputs (missing files, unknown chromosomes, intervals past a chromosome's end,
unreadable models, bad options) end the command with exit code 2 and a one-line message.

Example:
    >>> main(["demo", "--top", "3"])  # doctest: +ELLIPSIS
    basewise demo: ...
    0
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any, Callable, Dict, List, Optional


__all__ = ["main", "build_parser", "load_model", "read_regions", "CLIError"]


from .runs import (MAX_OUTPUT_BYTES, RunError, RunInterrupted, _first_line, attention_regions,  # noqa: F401
                   attribute_regions, ism_regions, load_model, read_regions)

CLIError = RunError  # a user error: printed as one line, exit code 2


# ---------------------------------------------------------------------------------------------
# option parsing helpers
# ---------------------------------------------------------------------------------------------
def _index_list(text: Optional[str], option: str, allow_names: bool = False) -> Optional[list]:
    """'0,3,5:8' -> [0, 3, 5, 6, 7]; names allowed for tasks."""
    if text is None:
        return None
    out: list = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            a, _, b = part.partition(":")
            try:
                out.extend(range(int(a), int(b)))
            except ValueError:
                raise CLIError(f"{option}: bad range {part!r} (expected START:END)") from None
            continue
        try:
            out.append(int(part))
        except ValueError:
            if not allow_names:
                raise CLIError(f"{option}: expected integers or START:END ranges, got {part!r}") from None
            out.append(part)
    if not out:
        raise CLIError(f"{option}: empty selection {text!r}")
    return out


def _transform_options(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The Aggregate options of the transform flags (None when none is given)."""
    opts = dict(
        tasks=_index_list(args.tasks, "--tasks", allow_names=True),
        except_tasks=_index_list(args.except_tasks, "--except-tasks", allow_names=True),
        positions=_index_list(args.positions, "--positions"),
        length_aggfunc=args.length_aggfunc,
        task_aggfunc=args.task_aggfunc,
        weight=args.weight,
    )
    return None if all(v is None for v in opts.values()) else opts


def _parse_devices(text: str):
    if text == "cpu":
        return "cpu"
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if all(p.isdigit() for p in parts):
        return int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]
    return parts[0] if len(parts) == 1 else parts


def _dtype(name: Optional[str]):
    import torch

    return None if name is None else {"float32": torch.float32, "float16": torch.float16,
                                       "bfloat16": torch.bfloat16, "float64": torch.float64}[name]


def _target(text: Optional[str]):
    """--target TASK[,BIN]: 3 -> 3, "3,10" -> (3, 10)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise CLIError(f"--target: expected TASK or TASK,BIN (non-negative integers), got {text!r}") from None
    if len(vals) not in (1, 2) or any(v < 0 for v in vals):
        raise CLIError(f"--target: expected TASK or TASK,BIN (non-negative integers), got {text!r}")
    return vals[0] if len(vals) == 1 else tuple(vals)


def _region_options(args) -> Dict[str, Any]:
    if args.fasta is not None and (args.center != "auto" or args.on_bad_interval != "error"):
        raise CLIError("--center/--on-bad-interval: these go with --bed, not with --fasta")
    return {"center": args.center, "on_bad_interval": args.on_bad_interval, "iupac": args.iupac,
            "max_output_bytes": None if args.yes else MAX_OUTPUT_BYTES}


def _ray_options(args) -> Dict[str, Any]:
    if args.ray is None:
        if args.workers is not None or args.threads_per_worker is not None:
            raise CLIError("--workers/--threads-per-worker: these go with --ray")
        return {}
    return {"ray": args.ray, "workers": args.workers, "threads_per_worker": args.threads_per_worker}


def _cmd_ism(args) -> int:
    r = ism_regions(
        args.model, args.bed, args.genome, args.output, fasta=args.fasta, width=args.width,
        transform_options=_transform_options(args), start_pos=args.start_pos, end_pos=args.end_pos,
        compare_func=args.compare, devices=_parse_devices(args.devices), batch_size=args.batch_size,
        engine=args.engine, dtype=_dtype(args.dtype), chunk_size=args.chunk_size, overwrite=args.overwrite,
        compression=None if args.compression == "none" else args.compression, progress=False if args.quiet else None,
        _info={"command_line": args.command_line}, _log=_logger(args, "ism"), **_ray_options(args),
        **_region_options(args),
    )
    return _report(args, "ism", r)


def _cmd_attribute(args) -> int:
    r = attribute_regions(
        args.model, args.bed, args.genome, args.output, fasta=args.fasta, width=args.width,
        transform_options=_transform_options(args), method=args.method, hypothetical=args.hypothetical,
        correct_grad=args.correct_grad, n_shuffles=args.n_shuffles, seed=args.seed, target=_target(args.target),
        n_steps=args.n_steps,
        batch_size=args.batch_size, device=_parse_devices(args.device), chunk_size=args.chunk_size,
        overwrite=args.overwrite, compression=None if args.compression == "none" else args.compression,
        progress=False if args.quiet else None, _info={"command_line": args.command_line},
        _log=_logger(args, "attribution"), **_ray_options(args), **_region_options(args),
    )
    return _report(args, "attribution", r)


def _cmd_attention(args) -> int:
    opts = _region_options(args)
    r = attention_regions(
        args.model, args.bed, args.genome, args.output, fasta=args.fasta, width=args.width,
        blocks=_index_list(args.blocks, "--blocks") if args.blocks else None, average_heads=args.average_heads,
        dtype=args.dtype, chunk_size=args.chunk_size, overwrite=args.overwrite,
        compression=None if args.compression == "none" else args.compression, progress=False if args.quiet else None,
        _info={"command_line": args.command_line}, _log=_logger(args, "attention"), **opts,
    )
    return _report(args, "attention", r)


def _logger(args, kind: str) -> Callable[[str], None]:
    return (lambda msg: None) if args.quiet else (lambda msg: print(f"basewise {kind}: {msg}", file=sys.stderr))


def _report(args, kind: str, results) -> int:
    with results as r:
        s = r.run_summary
    print(f"basewise {kind}: {s['total']} regions -> {args.output} (scores {s['shape']} {s['dtype']}; "
          f"{s['computed']} computed now, {s['resumed']} resumed"
          + (f"; {s['skipped']} intervals skipped, listed in the file" if s.get("skipped") else "")
          + (f"; {s['padded']} padded with N" if s.get("padded") else "") + ")")
    if s.get("nan"):  # even under -q: NaN scores are worth knowing about
        hint = (" (log2FC of predictions <= 0: logits or centred outputs; use --compare subtract or a model "
                "whose outputs are positive)" if getattr(args, "compare", None) == "log2FC" else "")
        print(f"basewise {kind}: warning: {s['nan']} of the scores computed now are NaN{hint}", file=sys.stderr)
    return 0


def _cmd_modisco(args) -> int:
    from .modisco import export_modisco_from_results

    if not os.path.exists(args.results):
        raise CLIError(f"results: file {args.results!r} does not exist")
    try:
        s, a = export_modisco_from_results(
            args.results, args.out_dir, allow_incomplete=args.allow_incomplete,
            allow_non_hypothetical=args.allow_non_hypothetical,
        )
    except (ValueError, OSError) as e:
        msg = _first_line(e).replace("allow_incomplete=True", "--allow-incomplete").replace(
            "allow_non_hypothetical=True", "--allow-non-hypothetical")  # the CLI's names, not Python's
        raise CLIError(f"modisco: {msg}") from None
    index = os.path.join(os.path.dirname(s), "regions.tsv")
    print(f"wrote {s} and {a}" + (f" (and {index}: npz row -> region, chrom, start, end, strand, name)"
                                   if os.path.exists(index) else "")
          + f"; next: modisco motifs -s {shlex.quote(s)} -a {shlex.quote(a)} -n 2000 -o modisco_results.h5")
    return 0


def _cmd_demo(args) -> int:
    from .demo import load_demo_sequence, run_demo

    df = run_demo(top=args.top, batch_size=args.batch_size)
    if args.plot:
        try:
            from .plot import plot_ism
            from matplotlib.figure import Figure
        except ImportError as e:
            raise CLIError(f"--plot: {_first_line(e)}") from None
        seq, motif_start, motif = load_demo_sequence()
        lo = max(0, motif_start - 30)
        hi = min(len(seq), motif_start + len(motif) + 30)
        fig = Figure(figsize=(9, 4.2), layout="constrained")
        ax_full, ax_logo, ax_heat = fig.subplots(3, 1, height_ratios=[1, 1.1, 1.1])
        plot_ism(df, method="heatmap", ax=ax_full, colorbar=False,
                 title=f"ISM of the demo sequence ({len(seq)} bp): change of the motif logit per substitution")
        plot_ism(df, start_pos=lo, end_pos=hi, method="logo", ax=ax_logo, offset=0,
                 title=f"logo: -mean effect at the reference base, positions {lo}-{hi - 1}",
                 highlight=(motif_start, motif_start + len(motif)))
        plot_ism(df, start_pos=lo, end_pos=hi, method="heatmap", ax=ax_heat,
                 title=f"heatmap: every substitution (planted motif {motif} outlined)",
                 highlight=(motif_start, motif_start + len(motif)))
        try:
            fig.savefig(args.plot, dpi=args.dpi)
        except (OSError, ValueError) as e:
            raise CLIError(f"--plot: cannot write {args.plot!r}: {_first_line(e)}") from None
        print(f"saved the ISM plot to {args.plot}")
    return 0


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------
def _add_inputs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sequences (one of)")
    g.add_argument("--fasta", metavar="FILE", help="FASTA file of equally long sequences")
    g.add_argument("--bed", metavar="FILE", help="BED file of intervals (0-based; strand column 6 honoured)")
    g.add_argument("--genome", metavar="FASTA", help="genome FASTA for --bed")
    g.add_argument("--width", type=_positive, metavar="W",
                   help="resize BED intervals to W bp around their centres (see --center)")
    g.add_argument("--center", choices=["auto", "summit", "midpoint"], default="auto",
                   help="centre of --width: the narrowPeak summit (column 10) or the interval midpoint "
                        "(default auto: the summit where the file has one)")
    g.add_argument("--on-bad-interval", choices=["error", "skip", "pad"], default="error",
                   help="an interval on an unknown chromosome or past a chromosome end: stop (default), skip it "
                        "(listed in the results file) or pad it with N")
    g.add_argument("--iupac", choices=["error", "n"], default="error",
                   help="letters other than ACGTN (IUPAC codes): stop before the run naming region and offset "
                        "(default), or read them as N")
    p.add_argument("-m", "--model", required=True,
                   help="TorchScript file, .pt2 (torch.export), .ckpt (gReLU) or module:function")
    p.add_argument("-o", "--output", required=True, metavar="FILE.h5", help="HDF5 results file (resumed if it exists)")
    p.add_argument("--overwrite", action="store_true", help="replace --output instead of resuming it")
    p.add_argument("--chunk-size", type=_positive, default=256, metavar="N",
                   help="regions computed and written at a time (default 256)")
    p.add_argument("--compression", choices=["gzip", "lzf", "none"], default="gzip",
                   help="HDF5 compression (default gzip, readable everywhere)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar, messages or warnings (a NaN count and the final line still print)")
    p.add_argument("-y", "--yes", action="store_true",
                   help="write the results even when they are estimated over 100 GB uncompressed")


def _add_ray(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("scale-out on Ray (pip install \"basewise[ray]\")")
    r.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run on Ray: 'local' (a Ray instance on this machine on 127.0.0.1, stopped after), "
                        "'auto' (the running cluster; also via RAY_ADDRESS) or ray://host:port")
    r.add_argument("--workers", type=_positive, default=None, metavar="N",
                   help="model replicas (default: one per GPU; without GPUs, CPUs // threads-per-worker)")
    r.add_argument("--threads-per-worker", type=_positive, default=None, metavar="T",
                   help="torch threads per worker (default 2 on CPU workers; CPUs per GPU, at most 8, on GPU workers)")


def _add_transform(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("prediction transform (like gReLU's Aggregate)")
    t.add_argument("--tasks", metavar="LIST", help="output tasks to keep, e.g. 0,3,5:8 (names for .ckpt models)")
    t.add_argument("--except-tasks", metavar="LIST", help="output tasks to drop")
    t.add_argument("--positions", metavar="LIST", help="output bins to keep, e.g. 100:120")
    t.add_argument("--length-aggfunc", choices=["sum", "mean", "min", "max", "absmax"], help="aggregate over bins")
    t.add_argument("--task-aggfunc", choices=["sum", "mean", "min", "max", "absmax"], help="aggregate over tasks")
    t.add_argument("--weight", type=float, help="multiply the transformed prediction by this")


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``, else an error saying "expected a {what} integer"."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
        return v
    return parse


_positive = _int_at_least(1, "positive")
_nonnegative = _int_at_least(0, "non-negative")


_EXAMPLES = {
    "main": """examples:
  basewise demo
  basewise ism -m mymodels.py:build --bed peaks.narrowPeak.gz --genome hg38.fa --width 1000 -o ism.h5
  basewise attribute -m mymodels.py:build --bed peaks.bed --genome hg38.fa --width 1000 --hypothetical -o shap.h5
  basewise modisco shap.h5 -o modisco_in/
  basewise summarize ism.h5 --by position --top 5 -o top.tsv
  basewise export-bigwig ism.h5 --genome hg38.fa -o ism.bw
run 'basewise COMMAND -h' for the options of each command""",
    "ism": """examples:
  # ISM of the central 100 bp of 1 kb windows around narrowPeak summits, summed over output bins
  basewise ism -m mymodels.py:build --bed peaks.narrowPeak.gz --genome hg38.fa --width 1000 \\
      --start-pos 450 --end-pos 550 --compare log2FC --length-aggfunc sum -o ism.h5
  # the same on a Ray cluster, skipping peaks too close to a chromosome end
  basewise ism -m model.pt2 --bed peaks.bed --genome hg38.fa --width 1000 --on-bad-interval skip \\
      --ray auto -o ism.h5
running the same command again resumes an interrupted run""",
    "attribute": """examples:
  # hypothetical DeepSHAP scores for TF-MoDISco (then: basewise modisco shap.h5 -o modisco_in/)
  basewise attribute -m mymodels.py:build --bed peaks.bed --genome hg38.fa --width 1000 \\
      --hypothetical --seed 0 --tasks 0 --length-aggfunc sum -o shap.h5
  # saliency of task 2, output bin 448 of a profile model
  basewise attribute -m model.pt2 --bed peaks.bed --genome hg38.fa --width 1000 \\
      --method saliency --target 2,448 -o saliency.h5""",
    "attention": """examples:
  # the last block's maps, averaged over heads, in float16
  basewise attention -m mymodels.py:build --bed peaks.bed --genome hg38.fa --width 1000 \\
      --blocks -1 --average-heads --dtype float16 -o attention.h5""",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="basewise", description="Fast, exact ISM and attributions for DNA models.",
                                     epilog=_EXAMPLES["main"], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"basewise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run ISM on the bundled sequence and model and print a summary")
    demo.add_argument("--top", type=_positive, default=10, help="positions to list (default 10)")
    demo.add_argument("--batch-size", type=_positive, default=64, help="mutants per forward pass (default 64)")
    demo.add_argument("--plot", metavar="FILE.png", help="also save the ISM heatmap and logo (needs basewise[plot])")
    demo.add_argument("--dpi", type=_positive, default=100, help="resolution of --plot (default 100)")

    ism = sub.add_parser("ism", help="saturation ISM of many sequences into an HDF5 file",
                         epilog=_EXAMPLES["ism"], formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Saturation in-silico mutagenesis (basewise.ISM_predict) of every region; "
                         "scores (N, P, 4, T, L_out) go to an HDF5 file, chunk by chunk.")
    _add_inputs(ism)
    _add_ray(ism)
    _add_transform(ism)
    ism.add_argument("--start-pos", type=_nonnegative, default=0, help="first mutated position (default 0)")
    ism.add_argument("--end-pos", type=_positive, default=None, help="end of the mutated range (default: length)")
    ism.add_argument("--compare", choices=["subtract", "divide", "log2FC"], default=None,
                     help="compare mutants with the reference (default: raw predictions)")
    ism.add_argument("--batch-size", type=_positive, default=64, help="mutants per forward pass (default 64)")
    ism.add_argument("--devices", "--device", dest="devices", default="cpu",
                     help="cpu, a CUDA index, or a list like 0,1 (default cpu)")
    ism.add_argument("--engine", choices=["auto", "incremental", "full"], default="auto",
                     help="ISM engine (default auto)")
    ism.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "float64"], default=None,
                     help="compute dtype (default: the model's). Caveat: ISM effects are small differences of "
                          "large outputs: bfloat16 (8-bit mantissa) can lose them (effects correlated 0.78 with "
                          "float32 on a test model), float16 kept 0.994; check a few regions in float32 first")

    att = sub.add_parser("attribute", help="attributions of many sequences into an HDF5 file",
                         epilog=_EXAMPLES["attribute"], formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Attributions (basewise.get_attributions) of every region; scores (N, 4, L) "
                         "go to an HDF5 file, chunk by chunk.")
    _add_inputs(att)
    _add_ray(att)
    _add_transform(att)
    att.add_argument("--method", choices=["deepshap", "saliency", "inputxgradient", "integratedgradients"],
                     default="deepshap", help="attribution method (default deepshap)")
    att.add_argument("--hypothetical", action="store_true", help="deepshap: hypothetical scores (for TF-MoDISco)")
    att.add_argument("--correct-grad", action="store_true", help="saliency: subtract the mean over bases")
    att.add_argument("--n-shuffles", type=_positive, default=20, help="deepshap references per sequence (default 20)")
    att.add_argument("--seed", type=int, default=None, help="deepshap shuffle seed (default: random)")
    att.add_argument("--target", default=None, metavar="TASK[,BIN]",
                     help="output to explain: a task (deepshap: default 0), or task,bin for a (T, L_out) output "
                          "with the gradient methods")
    att.add_argument("--n-steps", type=_positive, default=None,
                     help="integratedgradients: integration steps (default 50)")
    att.add_argument("--batch-size", type=_positive, default=None, help="batch size passed to the method")
    att.add_argument("--device", "--devices", dest="device", default="cpu",
                     help="cpu, cuda, or a CUDA index (default cpu)")

    attn = sub.add_parser("attention", help="attention maps of many sequences into an HDF5 file",
                          description="Attention maps (basewise.get_attention_scores) of every region; maps "
                          "(N, blocks, heads, L', L') go to an HDF5 file, chunk by chunk. They are large: see "
                          "--blocks, --average-heads and --dtype float16.",
                          epilog=_EXAMPLES["attention"], formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_inputs(attn)  # no Ray, no prediction transform
    attn.set_defaults(chunk_size=16)
    attn.add_argument("--blocks", metavar="LIST", help="attention blocks to keep, e.g. -1 or 0,3 (default: all)")
    attn.add_argument("--average-heads", action="store_true", help="average the maps over heads")
    attn.add_argument("--dtype", choices=["float16", "float32", "float64"], default="float32",
                      help="stored precision (default float32; float16 halves the file)")

    mod = sub.add_parser("modisco", help="export attribution results as modisco-lite inputs (ohe.npz, shap.npz)")
    mod.add_argument("results", help="HDF5 file written by 'basewise attribute --hypothetical'")
    mod.add_argument("-o", "--out-dir", required=True, help="folder for ohe.npz and shap.npz")
    mod.add_argument("--allow-incomplete", action="store_true", help="export the finished regions of an unfinished run")
    mod.add_argument("--allow-non-hypothetical", action="store_true", help="export non-hypothetical attributions")

    from ._cli_tools import register  # summarize, export-bigwig

    _COMMANDS.update(register(sub))
    return parser


_COMMANDS = {"demo": _cmd_demo, "ism": _cmd_ism, "attribute": _cmd_attribute, "attention": _cmd_attention,
             "modisco": _cmd_modisco}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["basewise"] + [str(a) for a in (sys.argv[1:] if argv is None else argv)])
    try:
        if args.command in ("ism", "attribute", "attention") and args.quiet:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _COMMANDS[args.command](args)
        return _COMMANDS[args.command](args)
    except CLIError as e:
        print(f"basewise {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunInterrupted as e:
        print(f"basewise {args.command}: interrupted; {e.done} of {e.total} regions are saved in {e.path}; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"basewise {args.command}: interrupted", file=sys.stderr)
        return 130

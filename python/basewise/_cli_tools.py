"""The ``basewise summarize`` and ``basewise export-bigwig`` sub-commands (after the run).

Both read a results file of ``basewise ism`` / ``basewise attribute`` through
:mod:`basewise.summarize`; :func:`register` adds them to the ``basewise`` parser.

Usage::

    basewise summarize RESULTS.h5 [--by region|position] [--score S] [--top N|all] [--overall]
                                  [--task T] [--bin B] [-o OUT.tsv|OUT.csv]
    basewise export-bigwig RESULTS.h5 -o OUT.bw|OUT.bedGraph [--score S] [--merge mean|max]
                                  [--genome FASTA] [--task T] [--bin B]

User errors raise :class:`basewise.runs.RunError` (one line naming the option; exit code 2).

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser(prog="basewise").add_subparsers(dest="command")
    >>> sorted(register(sub))
    ['export-bigwig', 'summarize']
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict

from .runs import RunError, _first_line

__all__ = ["register"]

_OPTION = {"score": "--score", "task": "--task", "bin": "--bin", "merge": "--merge", "chrom_sizes": "--genome",
           "n": "--top", "results": "results"}
_BIGWIG_EXT = (".bw", ".bigwig")
_BEDGRAPH_EXT = (".bedgraph", ".bg", ".bedgraph.gz", ".bg.gz")


def _user_error(e: BaseException) -> RunError:
    """The one-line RunError of a ValueError/ImportError/OSError, named by the CLI option."""
    msg = _first_line(e)
    head, sep, rest = msg.partition(": ")
    if sep and head in _OPTION:
        msg = f"{_OPTION[head]}: {rest}"
    return RunError(msg)


def _top(text: str):
    if text == "all":
        return "all"
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return v


def _nonnegative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return v


def _open(path: str):
    from .results import open_results

    if not os.path.exists(path):
        raise RunError(f"results: file {path!r} does not exist")
    try:
        return open_results(path)
    except (ValueError, OSError) as e:
        raise RunError(f"results: cannot read {path!r}: {_first_line(e)}") from None


def _selection_note(r, args) -> str:
    """'task 0 of 2, bin 0 of 1' for ISM files with several tasks or bins, else ''."""
    if r.kind != "ism" or r.scores is None:
        return ""
    t, b = r.scores.shape[3], r.scores.shape[4]
    if t == 1 and b == 1:
        return ""
    return f", task {args.task} of {t}, bin {args.bin} of {b} (--task/--bin)"


def _skipped_note(skipped: int, total: int) -> str:
    return f"; {skipped} of {total} regions are unfinished and were skipped" if skipped else ""


def _cmd_summarize(args: argparse.Namespace) -> int:
    from . import summarize as S

    if args.overall and args.by != "position":
        raise RunError("--overall: ranks positions over all regions; it goes with --by position")
    top = args.top if args.top is not None else ("all" if args.by == "region" else 10)
    if args.by == "position" and top == "all" and args.overall:
        raise RunError("--overall: needs --top N (the number of positions to list)")
    out = args.output
    if out is not None and os.path.isdir(out):
        raise RunError(f"-o/--output: {out!r} is a folder; give a file name (.tsv or .csv)")
    with _open(args.results) as r:
        try:
            if args.by == "region":
                df = S.region_summary(r, args.score, task=args.task, bin=args.bin)
                if top != "all":
                    df = df.sort_values("max", ascending=False, kind="stable").head(top)
            elif top == "all":
                df = S.to_pandas(r, args.score, task=args.task, bin=args.bin)
            else:
                df = S.top_positions(r, n=top, score=args.score, per_region=not args.overall, task=args.task,
                                     bin=args.bin)
        except (ValueError, ImportError) as e:
            raise _user_error(e) from None
        note = _selection_note(r, args)
        total = len(r)
    sep = "," if out is not None and out.lower().endswith((".csv", ".csv.gz")) else "\t"
    try:
        text = df.to_csv(out, sep=sep, index=False, float_format="%.7g")
    except OSError as e:
        raise RunError(f"-o/--output: cannot write {out!r}: {_first_line(e)}") from None
    if out is None:
        sys.stdout.write(text)
    what = "regions" if args.by == "region" else "positions"
    dest = out if out is not None else "stdout"
    print(f"basewise summarize: {len(df)} {what} (score {df.attrs['score']}{note}) -> {dest}"
          f"{_skipped_note(df.attrs['skipped'], total)}", file=sys.stderr)
    return 0


def _cmd_export_bigwig(args: argparse.Namespace) -> int:
    from . import summarize as S

    out = args.output
    low = out.lower()
    if low.endswith(_BIGWIG_EXT):
        bigwig = True
    elif low.endswith(_BEDGRAPH_EXT):
        bigwig = False
    else:
        raise RunError(f"-o/--output: {out!r}: expected a .bw / .bigWig (bigWig) or .bedGraph / .bg "
                       "(bedGraph, optionally .gz) file name")
    if os.path.isdir(out):
        raise RunError(f"-o/--output: {out!r} is a folder")
    if args.genome is not None and not os.path.exists(args.genome):
        raise RunError(f"--genome: file {args.genome!r} does not exist")
    with _open(args.results) as r:
        genome_hint = ((r.info or {}).get("inputs") or {}).get("genome")
        try:
            if bigwig:
                s = S.export_bigwig(r, out, score=args.score, merge=args.merge, chrom_sizes=args.genome,
                                    task=args.task, bin=args.bin)
            else:
                s = S.to_bedgraph(r, out, score=args.score, merge=args.merge, chrom_sizes=args.genome,
                                  task=args.task, bin=args.bin)
        except ImportError as e:
            raise RunError(f"-o/--output: {_first_line(e)} (-o OUT.bedGraph)") from None
        except OSError as e:
            raise RunError(f"-o/--output: cannot write {out!r}: {_first_line(e)}") from None
        except ValueError as e:
            raise _user_error(e) from None
        note = _selection_note(r, args)
        total = len(r)
    print(f"basewise export-bigwig: wrote {out} (score {s['score']}, merge {s['merge']}{note}; "
          f"{s['positions']} positions on {s['chroms']} chromosome{'s' if s['chroms'] != 1 else ''})"
          f"{_skipped_note(s['skipped'], total)}", file=sys.stderr)
    if bigwig and args.genome is None:
        hint = f" --genome {genome_hint}" if genome_hint else " --genome FASTA"
        print("basewise export-bigwig: note: the chromosome sizes in the bigWig header are the ends of the "
              f"last regions; genome browsers want the assembly's sizes: pass{hint}", file=sys.stderr)
    return 0


def _add_selection(p: argparse.ArgumentParser) -> None:
    from .summarize import SCORES

    p.add_argument("--score", choices=list(SCORES), default=None,
                   help="per-position score (default: mean_abs for ISM, attr_x_input for attributions): "
                        "mean_abs / max_abs = mean / max |effect| over the substitutions (ISM) or "
                        "|attribution| over the bases; logo = ISM logo height (-mean effect at the "
                        "reference base); attr_x_input = attribution x one-hot input")
    p.add_argument("--task", type=_nonnegative, default=0, help="ISM: the task whose scores are used (default 0)")
    p.add_argument("--bin", type=_nonnegative, default=0, help="ISM: the output bin whose scores are used (default 0)")


def register(subparsers) -> Dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``summarize`` and ``export-bigwig`` to the ``basewise`` sub-command parsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returns.

    Returns:
        The commands' functions by name (each takes the parsed arguments and returns the exit
        code; user errors raise :class:`basewise.runs.RunError`).
    """
    summ = subparsers.add_parser(
        "summarize", help="per-region or per-position summary of a results file as a table",
        description="Summarise a results file of 'basewise ism' or 'basewise attribute' in genome "
        "coordinates (0-based; positions of '-' strand regions mapped back): one row per region "
        "(--by region: max, its position, sum, mean of the per-position score) or the top positions "
        "(--by position). Only finished regions are read.")
    summ.add_argument("results", help="HDF5 results file")
    summ.add_argument("--by", choices=["region", "position"], default="region",
                      help="one row per region (default) or per position")
    summ.add_argument("--top", type=_top, default=None, metavar="N|all",
                      help="--by position: the top N positions of each region (default 10; 'all': every "
                           "position); --by region: the N regions with the highest max (default all)")
    summ.add_argument("--overall", action="store_true",
                      help="--by position: the top N positions over all regions, not per region")
    _add_selection(summ)
    summ.add_argument("-o", "--output", metavar="FILE", default=None,
                      help="write the table here (.csv: comma-separated, else tab-separated); default stdout")

    bw = subparsers.add_parser(
        "export-bigwig", help="write a per-position score as a bigWig or bedGraph track",
        description="Write a per-position score of a results file (a run on genome intervals) as a "
        "genome browser track, merged over overlapping regions. The format follows the -o extension: "
        ".bw/.bigWig (needs pyBigWig: pip install 'basewise[bigwig]') or .bedGraph/.bg (optionally .gz).")
    bw.add_argument("results", help="HDF5 results file of a run on --bed intervals")
    bw.add_argument("-o", "--output", required=True, metavar="FILE", help="OUT.bw, OUT.bigWig or OUT.bedGraph")
    _add_selection(bw)
    bw.add_argument("--merge", choices=["mean", "max"], default="mean",
                    help="how overlapping regions combine at a position (default mean)")
    bw.add_argument("--genome", metavar="FASTA", default=None,
                    help="genome FASTA (or .fai / chrom.sizes) for the bigWig's chromosome sizes (default: "
                         "the region ends, which genome browsers refuse) and to check the regions against")
    return {"summarize": _cmd_summarize, "export-bigwig": _cmd_export_bigwig}

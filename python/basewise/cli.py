"""The ``basewise`` command line (also ``python -m basewise``).

Sub-commands:
    demo       ISM of the bundled sequence with the bundled motif model, printed as a summary
               (``--plot FILE.png`` also saves the ISM logo and heatmap).
    ism        ISM of many sequences (FASTA, or BED + genome FASTA) into an HDF5 results file.
    attribute  Attributions of many sequences into an HDF5 results file.
    modisco    Export an attribution results file as TF-MoDISco (modisco-lite) inputs.

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
import contextlib
import gzip
import hashlib
import importlib
import importlib.util
import os
import shlex
import signal
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .ism import ISM_predict as _probe_ism  # bound at import: the probe is not a chunk of the run

__all__ = ["main", "build_parser", "load_model", "read_regions", "CLIError"]


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------
# regions
# ---------------------------------------------------------------------------------------------
class _Regions:
    """Regions to score: a table (name, chrom, start, end, strand) and a way to fetch them."""

    def __init__(self, table, fasta, kind: str, info: Dict[str, Any]):
        self.table = table  # pandas DataFrame
        self.fasta = fasta  # open pyfaidx.Fasta
        self.kind = kind  # "fasta" or "bed"
        self.info = info
        lengths = (table["end"] - table["start"]).to_numpy()
        self.seq_len = int(lengths[0])

    def __len__(self) -> int:
        return len(self.table)

    def fetch(self, idx: np.ndarray) -> List[str]:
        """Sequences (upper case, reverse-complemented on "-") of the regions ``idx``."""
        from .sequence import intervals_to_strings

        sub = self.table.iloc[idx]
        df = sub[["chrom", "start", "end", "strand"]].reset_index(drop=True)
        return intervals_to_strings(df, self.fasta)


def _open_fasta(path: str, option: str):
    if not os.path.exists(path):
        raise CLIError(f"{option}: file {path!r} does not exist")
    if os.path.isdir(path):
        raise CLIError(f"{option}: {path!r} is a folder, not a FASTA file")
    import pyfaidx

    try:
        return pyfaidx.Fasta(path, sequence_always_upper=False, rebuild=False)
    except Exception as e:  # pyfaidx raises many types (FastaIndexingError, ValueError, OSError)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CLIError(f"{option}: cannot read {path!r} as FASTA (pyfaidx: {msg})") from None


def _parse_bed(path: str) -> List[Tuple[int, str, int, int, str, str]]:
    """(line number, chrom, start, end, name, strand) of each BED record."""
    if not os.path.exists(path):
        raise CLIError(f"--bed: file {path!r} does not exist")
    out = []
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"  # gzip (and bgzip) magic: read transparently
    try:
        fh = gzip.open(path, "rt") if gz else open(path)
    except OSError as e:
        raise CLIError(f"--bed: cannot read {path!r}: {_first_line(e)}") from None
    with fh:
        try:
            lines = list(fh)
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise CLIError(f"--bed: cannot read {path!r} as {'gzipped ' if gz else ''}text: {_first_line(e)}") from None
        for lineno, line in enumerate(lines, 1):
            s = line.strip()
            if not s or s.startswith(("#", "track", "browser")):
                continue
            f = s.split("\t") if "\t" in s else s.split()
            if len(f) < 3:
                raise CLIError(f"--bed: {path}:{lineno}: expected at least 3 columns (chrom, start, end)")
            try:
                start, end = int(f[1]), int(f[2])
            except ValueError:
                raise CLIError(f"--bed: {path}:{lineno}: start and end must be integers, got {f[1]!r}, {f[2]!r}") from None
            if start < 0 or end < start:
                raise CLIError(f"--bed: {path}:{lineno}: invalid interval {f[0]}:{start}-{end}")
            name = f[3] if len(f) > 3 and f[3] not in ("", ".") else f"{f[0]}:{start}-{end}"
            strand = f[5] if len(f) > 5 else "."
            if strand not in ("+", "-", "."):
                raise CLIError(f"--bed: {path}:{lineno}: strand must be +, - or ., got {strand!r}")
            out.append((lineno, f[0], start, end, name, strand))
    if not out:
        raise CLIError(f"--bed: {path!r} has no intervals")
    return out


def read_regions(fasta: Optional[str] = None, bed: Optional[str] = None, genome: Optional[str] = None,
                 width: Optional[int] = None) -> _Regions:
    """Regions from a FASTA file of sequences, or from a BED file and a genome FASTA.

    All regions must have one length: pass ``width`` to resize BED intervals around their
    centres. Every interval is checked against the genome (chromosome present, inside it) before
    anything is computed.

    Args:
        fasta: FASTA file whose records are the sequences (names = record names). Default None.
        bed: BED file (chrom, start, end[, name, score, strand]; 0-based, half-open). Default None.
        genome: genome FASTA for ``bed``. Default None.
        width: resize BED intervals to this width around their centres. Default None.

    Returns:
        A region set with ``table`` (name, chrom, start, end, strand), ``seq_len`` and
        ``fetch(indices)``.

    Raises:
        CLIError: missing or unreadable files, unknown chromosomes, intervals outside a
            chromosome, unequal lengths.
    """
    import pandas as pd

    if (fasta is None) == (bed is None):
        raise CLIError("give the sequences either as --fasta FILE or as --bed FILE --genome FASTA")
    if fasta is not None:
        if genome is not None or width is not None:
            raise CLIError("--genome and --width go with --bed, not with --fasta")
        fa = _open_fasta(fasta, "--fasta")
        names = list(fa.keys())
        if not names:
            raise CLIError(f"--fasta: {fasta!r} has no sequences")
        lengths = [len(fa[n]) for n in names]
        table = pd.DataFrame({"name": names, "chrom": names, "start": 0, "end": lengths, "strand": "+"})
        if len(set(lengths)) > 1:
            j = next(i for i, n in enumerate(lengths) if n != lengths[0])
            raise CLIError(
                f"--fasta: sequences must all have the same length: {names[0]!r} has {lengths[0]} bp, "
                f"{names[j]!r} has {lengths[j]} bp"
            )
        return _Regions(table, fa, "fasta", {"fasta": os.path.abspath(fasta)})

    if genome is None:
        raise CLIError("--bed needs --genome FASTA (the genome the intervals refer to)")
    records = _parse_bed(bed)
    fa = _open_fasta(genome, "--genome")
    chrom_len = {k: len(fa[k]) for k in fa.keys()}
    rows = []
    for lineno, chrom, start, end, name, strand in records:
        if chrom not in chrom_len:
            known = ", ".join(list(chrom_len)[:5]) + (", ..." if len(chrom_len) > 5 else "")
            raise CLIError(f"--bed: {bed}:{lineno}: unknown chromosome {chrom!r} (the genome has {known})")
        if width is not None:
            centre = (start + end) // 2
            start = centre - width // 2
            end = start + width
            if start < 0:
                raise CLIError(
                    f"--bed: {bed}:{lineno}: {chrom}:{start}-{end} (resized to --width {width}) starts before "
                    f"the beginning of {chrom}"
                )
        if end > chrom_len[chrom]:
            raise CLIError(
                f"--bed: {bed}:{lineno}: interval {chrom}:{start}-{end} runs past the end of {chrom} "
                f"(length {chrom_len[chrom]})"
            )
        rows.append((name, chrom, start, end, strand))
    table = pd.DataFrame(rows, columns=["name", "chrom", "start", "end", "strand"])
    lengths = (table["end"] - table["start"]).to_numpy()
    if (lengths != lengths[0]).any():
        j = int(np.flatnonzero(lengths != lengths[0])[0])
        raise CLIError(
            f"--bed: intervals must all have the same length ({table.name[0]!r} is {lengths[0]} bp, "
            f"{table.name[j]!r} is {lengths[j]} bp); pass --width to resize them around their centres"
        )
    if lengths[0] == 0:
        raise CLIError("--bed: the intervals are empty (length 0)")
    info = {"bed": os.path.abspath(bed), "genome": os.path.abspath(genome), "width": width}
    return _Regions(table, fa, "bed", info)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
class ExportedModule:
    """Marker base so isinstance checks can find wrapped ``torch.export`` programs."""


def _wrap_exported(gm: Any) -> Any:
    import torch

    class _Exported(torch.nn.Module, ExportedModule):
        """A ``torch.export`` program as a module: its graph is fixed in the mode it was
        exported in, so ``train``/``eval`` only set the flag (the program refuses them)."""

        def __init__(self, module: Any):
            super().__init__()
            self.program = module

        def train(self, mode: bool = True):
            self.training = mode
            return self

        def forward(self, x):
            return self.program(x)

    return _Exported(gm)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    import logging

    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_model(spec: str) -> Tuple[Any, Dict[str, Any]]:
    """Load ``-m/--model``: TorchScript file, ``.pt2`` export, gReLU ``.ckpt``, or ``module:function``.

    Args:
        spec: a path, or ``module.sub:function`` / ``file.py:function`` naming a function that
            takes no arguments and returns the model.

    Returns:
        The model (on the CPU, in eval mode) and a dict identifying it (kind, and the file's
        sha256 or the reference) for the results file.

    Raises:
        CLIError: the file is missing or cannot be read as that kind of model, or the function
            cannot be imported or does not return a callable.
    """
    import torch

    if os.path.exists(spec) and not os.path.isdir(spec):
        ext = os.path.splitext(spec)[1].lower()
        ident = {"kind": None, "sha256": _sha256(spec), "path": os.path.abspath(spec)}
        if ext == ".ckpt":
            ident["kind"] = "grelu-checkpoint"
            try:
                from grelu.lightning import LightningModel  # optional: only when gReLU is installed
            except ImportError:
                raise CLIError(
                    f"--model: {spec!r} is a gReLU checkpoint, but gReLU is not installed (pip install "
                    "gReLU), or export the model to TorchScript/torch.export"
                ) from None
            try:
                model = LightningModel.load_from_checkpoint(spec, map_location="cpu")
            except Exception as e:
                raise CLIError(f"--model: cannot load gReLU checkpoint {spec!r}: {_first_line(e)}") from None
        elif ext == ".pt2":
            ident["kind"] = "torch.export"
            try:
                with _quiet_logger("torch.export"):  # it logs a traceback before raising
                    model = _wrap_exported(torch.export.load(spec).module())
            except Exception as e:
                raise CLIError(f"--model: cannot read {spec!r} as a torch.export program (.pt2): {_first_line(e)}") from None
        else:
            ident["kind"] = "torchscript"
            try:
                model = torch.jit.load(spec, map_location="cpu")
            except Exception as e:
                raise CLIError(
                    f"--model: cannot read {spec!r} as a TorchScript file (torch.jit.save): {_first_line(e)}; "
                    "for other models pass module:function"
                ) from None
        if isinstance(model, torch.nn.Module) and not isinstance(model, ExportedModule):
            model.eval()
        ident["weights"] = _weights_fingerprint(model)
        return model, ident
    if os.path.isdir(spec):
        raise CLIError(f"--model: {spec!r} is a folder, not a model file")
    if ":" not in spec:
        raise CLIError(f"--model: file {spec!r} does not exist (nor is it a module:function reference)")
    target, _, func_name = spec.rpartition(":")
    if not target or not func_name.isidentifier():
        raise CLIError(f"--model: {spec!r} is neither an existing file nor a module:function reference")
    try:
        if target.endswith(".py"):
            if not os.path.exists(target):
                raise CLIError(f"--model: file {target!r} does not exist")
            mod_spec = importlib.util.spec_from_file_location(f"_basewise_model_{abs(hash(target))}", target)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())  # like `python -m`: modules in the working folder
            module = importlib.import_module(target)
    except CLIError:
        raise
    except Exception as e:
        raise CLIError(f"--model: cannot import {target!r}: {type(e).__name__}: {_first_line(e)}") from None
    fn = getattr(module, func_name, None)
    if fn is None or not callable(fn):
        raise CLIError(f"--model: {target!r} has no function {func_name!r}")
    try:
        model = fn()
    except Exception as e:
        raise CLIError(f"--model: {spec}() raised {type(e).__name__}: {_first_line(e)}") from None
    if not callable(model):
        raise CLIError(f"--model: {spec}() returned {type(model).__name__}, not a model (a callable module)")
    if isinstance(model, torch.nn.Module):
        model.eval()
    # identified by what it computes: the function's module (so ./mymodels.py:build and
    # mymodels:build are the same model) and a content digest of its weights (a weights file
    # replaced between an interrupted run and its resume is refused)
    stem = os.path.splitext(os.path.basename(target))[0] if target.endswith(".py") else target.rpartition(".")[2]
    return model, {"kind": "function", "function": f"{stem}:{func_name}", "reference": spec,
                   "weights": _weights_fingerprint(model)}


def _weights_fingerprint(model: Any) -> Optional[str]:
    """Content digest of a model's parameters and buffers (None for a plain callable)."""
    import torch

    from ._model import tensor_digest

    if not isinstance(model, torch.nn.Module):
        return None
    return tensor_digest([t for _, t in model.named_parameters()] + [t for _, t in model.named_buffers()])


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


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


def _build_transform(args: argparse.Namespace, model: Any):
    """An Aggregate from the transform options, or None when none is given."""
    opts = dict(
        tasks=_index_list(args.tasks, "--tasks", allow_names=True),
        except_tasks=_index_list(args.except_tasks, "--except-tasks", allow_names=True),
        positions=_index_list(args.positions, "--positions"),
        length_aggfunc=args.length_aggfunc,
        task_aggfunc=args.task_aggfunc,
        weight=args.weight,
    )
    if all(v is None for v in opts.values()):
        return None, None
    from .transforms import Aggregate

    try:
        return Aggregate(model=model, **opts), opts
    except (ValueError, IndexError, AssertionError) as e:
        raise CLIError(f"transform options: {_first_line(e)}") from None


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


# ---------------------------------------------------------------------------------------------
# the chunked, resumable run
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (a batch scheduler stopping the job) into KeyboardInterrupt while running,
    so the results file is flushed and closed."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not the main thread, or no signals on this platform
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _probe(model, transform, regions: _Regions, start: int, devices) -> None:
    """One reference and 3 mutants of the first region through the model and the transform,
    before the output file is created: model/input/transform mismatches fail here, in a second."""
    seq = regions.fetch(np.array([0]))
    try:
        _probe_ism(seq, model, prediction_transform=transform, start_pos=start, end_pos=start + 1,
                    devices=devices, engine="full", progress=False, return_df=False)
    except Exception as e:  # anything the model raises on these inputs is a user-level mismatch
        raise CLIError(
            f"--model: it cannot score the regions ({regions.seq_len} bp) with these options: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from None


def _run_chunks(args, regions: _Regions, kind: str, arguments: Dict[str, Any], compute: Callable,
                out=None) -> int:
    """Compute ``compute(seqs) -> (n, ...) array`` chunk by chunk into the results file."""
    from tqdm.auto import tqdm

    from .results import ResultsMismatchError, ResultsWriter
    from .sequence import to_indices

    out = sys.stdout if out is None else out
    if os.path.exists(args.output) and os.path.isdir(args.output):
        raise CLIError(f"--output: {args.output!r} is a folder")
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent):
        raise CLIError(f"--output: folder {parent!r} does not exist")
    try:
        writer = ResultsWriter(
            args.output, kind, regions.table, regions.seq_len, arguments, overwrite=args.overwrite,
            chunk_regions=args.chunk_size, compression=None if args.compression == "none" else args.compression,
            info={"command_line": args.command_line, "inputs": regions.info, "model": args.model},
        )
    except ResultsMismatchError as e:
        raise CLIError(f"--output: {_first_line(e)} (--overwrite)") from None
    except OSError as e:
        raise CLIError(f"--output: {_first_line(e)}") from None
    n = len(regions)
    with writer, _sigterm_as_interrupt():
        todo = writer.todo()
        already = n - len(todo)
        if writer.resumed and not args.quiet:
            print(f"basewise {kind}: resuming {args.output}: {already} of {n} regions already done",
                  file=sys.stderr)
        bar = tqdm(total=n, initial=already, unit="region", file=sys.stderr, disable=args.quiet,
                   dynamic_ncols=True, desc=f"basewise {args.command}", smoothing=0.1)
        try:
            for s in range(0, len(todo), args.chunk_size):
                idx = todo[s : s + args.chunk_size]  # (n,) increasing
                seqs = regions.fetch(idx)
                scores = compute(seqs)
                writer.write(idx, to_indices(seqs), scores)
                bar.update(len(idx))
        except KeyboardInterrupt:
            bar.close()
            done = int(writer.done.sum())
            print(f"basewise {kind}: interrupted; {done} of {n} regions are saved in {args.output}; "
                  "run the same command again to resume", file=sys.stderr)
            return 130
        finally:
            bar.close()
        shape = writer._f["scores"].shape if "scores" in writer._f else None
        dtype = writer._f["scores"].dtype if shape else None
    print(f"basewise {kind}: {n} regions -> {args.output} (scores {shape} {dtype}; "
          f"{n - already} computed now, {already} resumed)", file=out)
    return 0


def _common_arguments(args, model_ident, transform_opts) -> Dict[str, Any]:
    return {"command": args.command, "model": model_ident_for_compare(model_ident), "transform": transform_opts}


def model_ident_for_compare(ident: Dict[str, Any]) -> Dict[str, Any]:
    """The part of a model's identity that must match on resume: what it computes (kind, file
    digest, function, weights digest), not how it was named (path, reference text)."""
    return {k: v for k, v in ident.items() if k not in ("path", "reference")}


def _cmd_ism(args) -> int:
    from .ism import ISM_predict

    regions = read_regions(args.fasta, args.bed, args.genome, args.width)
    L = regions.seq_len
    start = args.start_pos
    end = L if args.end_pos is None else args.end_pos
    if not 0 <= start < end <= L:
        raise CLIError(f"--start-pos/--end-pos: expected 0 <= start < end <= {L} (the sequence length), got {start}, {end}")
    model, ident = load_model(args.model)
    transform, topts = _build_transform(args, model)
    devices = _parse_devices(args.devices)
    dtype = _dtype(args.dtype)
    arguments = _common_arguments(args, ident, topts)
    arguments.update(start_pos=start, end_pos=end, compare_func=args.compare, dtype=args.dtype)

    _probe(model, transform, regions, start, devices)

    def compute(seqs: List[str]) -> np.ndarray:
        return ISM_predict(
            seqs, model, prediction_transform=transform, start_pos=start, end_pos=end,
            compare_func=args.compare, devices=devices, batch_size=args.batch_size, return_df=False,
            engine=args.engine, progress=False, dtype=dtype,
        )  # (n, P, 4, T, L_out) float32

    return _run_guarded(args, regions, "ism", arguments, compute)


def _cmd_attribute(args) -> int:
    regions = read_regions(args.fasta, args.bed, args.genome, args.width)
    model, ident = load_model(args.model)
    if args.method == "deepshap" and ident["kind"] in ("torchscript", "torch.export"):
        raise CLIError(
            f"--method deepshap: a {ident['kind']} model hides its layers (nn.ReLU, ...) from DeepLIFT's "
            "rules, so it would be explained as if it were linear; pass the model as module:function "
            "(or a gReLU .ckpt), or use another --method"
        )
    transform, topts = _build_transform(args, model)
    try:
        from .attribution import get_attributions
    except ImportError as e:  # pragma: no cover - attribution.py is part of the package
        raise CLIError(f"attribute: get_attributions is unavailable: {_first_line(e)}") from None
    kwargs: Dict[str, Any] = {}
    if args.target is not None:
        kwargs["target"] = args.target
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    arguments = _common_arguments(args, ident, topts)
    arguments.update(method=args.method, hypothetical=args.hypothetical, correct_grad=args.correct_grad,
                     n_shuffles=args.n_shuffles, seed=args.seed, target=args.target)
    device = _parse_devices(args.device)
    _probe(model, transform, regions, 0, device)

    def compute(seqs: List[str]) -> np.ndarray:
        a = get_attributions(
            model, seqs, prediction_transform=transform, device=device, method=args.method,
            correct_grad=args.correct_grad, hypothetical=args.hypothetical, n_shuffles=args.n_shuffles,
            seed=args.seed, **kwargs,
        )
        return np.asarray(a)  # (n, 4, L)

    return _run_guarded(args, regions, "attribution", arguments, compute)


def _run_guarded(args, regions, kind, arguments, compute) -> int:
    """Run the chunks; scoring errors caused by the inputs or options become one-line errors."""
    import warnings

    from .sequence import SequenceInputError

    try:
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
            return _run_chunks(args, regions, kind, arguments, compute)
    except (SequenceInputError, ValueError, NotImplementedError, IndexError) as e:
        if isinstance(e, CLIError):
            raise
        raise CLIError(f"{args.command}: {type(e).__name__}: {_first_line(e)}") from e


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
        raise CLIError(f"modisco: {_first_line(e)}") from None
    print(f"wrote {s} and {a}; next: modisco motifs -s {shlex.quote(s)} -a {shlex.quote(a)} "
          f"-n 2000 -o modisco_results.h5")
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
    g.add_argument("--width", type=int, metavar="W", help="resize BED intervals to W bp around their centres")
    p.add_argument("-m", "--model", required=True,
                   help="TorchScript file, .pt2 (torch.export), .ckpt (gReLU) or module:function")
    p.add_argument("-o", "--output", required=True, metavar="FILE.h5", help="HDF5 results file (resumed if it exists)")
    p.add_argument("--overwrite", action="store_true", help="replace --output instead of resuming it")
    p.add_argument("--chunk-size", type=_positive, default=256, metavar="N",
                   help="regions computed and written at a time (default 256)")
    p.add_argument("--compression", choices=["gzip", "lzf", "none"], default="gzip",
                   help="HDF5 compression (default gzip, readable everywhere)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, messages or warnings")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="basewise", description="Fast, exact ISM and attributions for DNA models.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run ISM on the bundled sequence and model and print a summary")
    demo.add_argument("--top", type=_positive, default=10, help="positions to list (default 10)")
    demo.add_argument("--batch-size", type=_positive, default=64, help="mutants per forward pass (default 64)")
    demo.add_argument("--plot", metavar="FILE.png", help="also save the ISM heatmap and logo (needs basewise[plot])")
    demo.add_argument("--dpi", type=_positive, default=100, help="resolution of --plot (default 100)")

    ism = sub.add_parser("ism", help="saturation ISM of many sequences into an HDF5 file",
                         description="Saturation in-silico mutagenesis (basewise.ISM_predict) of every region; "
                         "scores (N, P, 4, T, L_out) go to an HDF5 file, chunk by chunk.")
    _add_inputs(ism)
    ism.add_argument("--start-pos", type=_nonnegative, default=0, help="first mutated position (default 0)")
    ism.add_argument("--end-pos", type=_positive, default=None, help="end of the mutated range (default: length)")
    ism.add_argument("--compare", choices=["subtract", "divide", "log2FC"], default=None,
                     help="compare mutants with the reference (default: raw predictions)")
    ism.add_argument("--batch-size", type=_positive, default=64, help="mutants per forward pass (default 64)")
    ism.add_argument("--devices", default="cpu", help="cpu, a CUDA index, or a list like 0,1 (default cpu)")
    ism.add_argument("--engine", choices=["auto", "incremental", "full"], default="auto",
                     help="ISM engine (default auto)")
    ism.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "float64"], default=None,
                     help="compute dtype (default: the model's)")

    att = sub.add_parser("attribute", help="attributions of many sequences into an HDF5 file",
                         description="Attributions (basewise.get_attributions) of every region; scores (N, 4, L) "
                         "go to an HDF5 file, chunk by chunk.")
    _add_inputs(att)
    att.add_argument("--method", choices=["deepshap", "saliency", "inputxgradient", "integratedgradients"],
                     default="deepshap", help="attribution method (default deepshap)")
    att.add_argument("--hypothetical", action="store_true", help="deepshap: hypothetical scores (for TF-MoDISco)")
    att.add_argument("--correct-grad", action="store_true", help="saliency: subtract the mean over bases")
    att.add_argument("--n-shuffles", type=_positive, default=20, help="deepshap references per sequence (default 20)")
    att.add_argument("--seed", type=int, default=None, help="deepshap shuffle seed (default: random)")
    att.add_argument("--target", type=_nonnegative, default=None, help="deepshap: output task to explain (default 0)")
    att.add_argument("--batch-size", type=_positive, default=None, help="batch size passed to the method")
    att.add_argument("--device", default="cpu", help="cpu, cuda, or a CUDA index (default cpu)")

    mod = sub.add_parser("modisco", help="export attribution results as modisco-lite inputs (ohe.npz, shap.npz)")
    mod.add_argument("results", help="HDF5 file written by 'basewise attribute --hypothetical'")
    mod.add_argument("-o", "--out-dir", required=True, help="folder for ohe.npz and shap.npz")
    mod.add_argument("--allow-incomplete", action="store_true", help="export the finished regions of an unfinished run")
    mod.add_argument("--allow-non-hypothetical", action="store_true", help="export non-hypothetical attributions")
    return parser


_COMMANDS = {"demo": _cmd_demo, "ism": _cmd_ism, "attribute": _cmd_attribute, "modisco": _cmd_modisco}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["basewise"] + [str(a) for a in (sys.argv[1:] if argv is None else argv)])
    try:
        return _COMMANDS[args.command](args)
    except CLIError as e:
        print(f"basewise {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"basewise {args.command}: interrupted", file=sys.stderr)
        return 130

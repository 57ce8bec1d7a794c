r"""Region runs: ISM and attributions of many genomic regions into one resumable results file.

The Python API behind ``basewise ism`` and ``basewise attribute`` (the CLI is a thin layer over
it), for notebooks and pipelines (Snakemake, Nextflow) that should not shell out:

* :func:`ism_regions` / :func:`attribute_regions`: regions (a DataFrame of intervals, a BED path
  or a FASTA of sequences) + genome + model (an object or a spec such as ``"model.pt2"`` or
  ``"mymodels:build"``) in; a resumable HDF5 results file out (:mod:`basewise.results`); the
  opened results are returned.
* Regions are computed ``chunk_size`` at a time and each chunk is written before the next one
  starts. Running the same call again resumes: finished regions are skipped; a file written by
  another run (other arguments, regions, or model weights) is refused.
* ``ray=`` runs the chunks on a Ray cluster (:mod:`basewise._ray`): one model replica per worker
  actor, FASTA extraction in the workers, a single writer here.

Every input is checked before any heavy work; a user error raises :class:`RunError` (a
``ValueError``; the CLI prints it as one line with exit code 2).

Example:
    >>> import os, tempfile, torch, pandas as pd
    >>> d = tempfile.mkdtemp(); fa = os.path.join(d, "g.fa")
    >>> _ = open(fa, "w").write(">chr1\n" + "ACGTTGCA" * 8 + "\n")
    >>> model = torch.nn.Sequential(torch.nn.Conv1d(4, 1, 3, padding=1), torch.nn.AdaptiveAvgPool1d(1))
    >>> bed = pd.DataFrame({"chrom": ["chr1", "chr1"], "start": [0, 20], "end": [16, 36]})
    >>> with ism_regions(model, bed, fa, os.path.join(d, "ism.h5"), progress=False) as r:
    ...     r.scores.shape
    (2, 16, 4, 1, 1)
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import importlib
import importlib.util
import os
import signal
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .ism import ISM_predict as _probe_ism  # bound at import: the probe is not a chunk of the run

__all__ = ["ism_regions", "attribute_regions", "read_regions", "load_model", "RunError", "RunInterrupted"]


class RunError(ValueError):
    """A user error in a region run (bad file, option or model): one line, exit code 2 in the CLI."""


class RunInterrupted(KeyboardInterrupt):
    """The run was interrupted (Ctrl-C, SIGTERM); finished chunks are saved and the same call
    resumes. ``done`` and ``total`` count regions."""

    def __init__(self, done: int, total: int, path: str):
        super().__init__(f"{done} of {total} regions are saved in {path}")
        self.done, self.total, self.path = done, total, path


# ---------------------------------------------------------------------------------------------
# regions
# ---------------------------------------------------------------------------------------------
class _Regions:
    """Regions to score: a table (name, chrom, start, end, strand) and a way to fetch them."""

    def __init__(self, table, fasta, kind: str, info: Dict[str, Any]):
        self.table = table  # pandas DataFrame
        self.fasta = fasta  # open pyfaidx.Fasta
        self.fasta_path = os.path.abspath(fasta.filename)
        self.kind = kind  # "fasta" or "bed"
        self.info = info
        lengths = (table["end"] - table["start"]).to_numpy()
        self.seq_len = int(lengths[0])

    def __getstate__(self) -> Dict[str, Any]:
        # shipped to Ray workers without the open file: each worker reads the FASTA itself
        state = dict(self.__dict__)
        state["fasta"] = None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.table)

    def fetch(self, idx: np.ndarray) -> List[str]:
        """Sequences (upper case, reverse-complemented on "-") of the regions ``idx``."""
        from .sequence import intervals_to_strings

        if self.fasta is None:
            self.fasta = _open_fasta(self.fasta_path, "--genome" if self.kind == "bed" else "--fasta")
        sub = self.table.iloc[idx]
        df = sub[["chrom", "start", "end", "strand"]].reset_index(drop=True)
        return intervals_to_strings(df, self.fasta)


def _open_fasta(path: str, option: str):
    if not os.path.exists(path):
        raise RunError(f"{option}: file {path!r} does not exist")
    if os.path.isdir(path):
        raise RunError(f"{option}: {path!r} is a folder, not a FASTA file")
    import pyfaidx

    try:
        return pyfaidx.Fasta(path, sequence_always_upper=False, rebuild=False)
    except Exception as e:  # pyfaidx raises many types (FastaIndexingError, ValueError, OSError)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{option}: cannot read {path!r} as FASTA (pyfaidx: {msg})") from None


def _parse_bed(path: str) -> List[Tuple[int, str, int, int, str, str]]:
    """(line number, chrom, start, end, name, strand) of each BED record."""
    if not os.path.exists(path):
        raise RunError(f"--bed: file {path!r} does not exist")
    out = []
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"  # gzip (and bgzip) magic: read transparently
    try:
        fh = gzip.open(path, "rt") if gz else open(path)
    except OSError as e:
        raise RunError(f"--bed: cannot read {path!r}: {_first_line(e)}") from None
    with fh:
        try:
            lines = list(fh)
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise RunError(f"--bed: cannot read {path!r} as {'gzipped ' if gz else ''}text: {_first_line(e)}") from None
        for lineno, line in enumerate(lines, 1):
            s = line.strip()
            if not s or s.startswith(("#", "track", "browser")):
                continue
            f = s.split("\t") if "\t" in s else s.split()
            if len(f) < 3:
                raise RunError(f"--bed: {path}:{lineno}: expected at least 3 columns (chrom, start, end)")
            try:
                start, end = int(f[1]), int(f[2])
            except ValueError:
                raise RunError(f"--bed: {path}:{lineno}: start and end must be integers, got {f[1]!r}, {f[2]!r}") from None
            if start < 0 or end < start:
                raise RunError(f"--bed: {path}:{lineno}: invalid interval {f[0]}:{start}-{end}")
            name = f[3] if len(f) > 3 and f[3] not in ("", ".") else f"{f[0]}:{start}-{end}"
            strand = f[5] if len(f) > 5 else "."
            if strand not in ("+", "-", "."):
                raise RunError(f"--bed: {path}:{lineno}: strand must be +, - or ., got {strand!r}")
            out.append((lineno, f[0], start, end, name, strand))
    if not out:
        raise RunError(f"--bed: {path!r} has no intervals")
    return out


def _frame_records(df: Any) -> List[Tuple[int, str, int, int, str, str]]:
    """BED-like records from a DataFrame of intervals (chrom, start, end[, name][, strand])."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise RunError(f"regions: expected a DataFrame of intervals or a BED path, got {type(df).__name__}")
    missing = [c for c in ("chrom", "start", "end") if c not in df.columns]
    if missing:
        raise RunError(f"regions: the DataFrame lacks the column(s) {missing} (needs chrom, start, end)")
    if len(df) == 0:
        raise RunError("regions: the DataFrame has no intervals")
    out = []
    for i, row in enumerate(df.itertuples(index=False)):
        r = row._asdict()
        try:
            start, end = int(r["start"]), int(r["end"])
        except (TypeError, ValueError):
            raise RunError(f"regions: row {i}: start and end must be integers") from None
        if start < 0 or end < start:
            raise RunError(f"regions: row {i}: invalid interval {r['chrom']}:{start}-{end}")
        strand = str(r.get("strand", ".")) if r.get("strand") is not None else "."
        if strand not in ("+", "-", "."):
            raise RunError(f"regions: row {i}: strand must be +, - or ., got {strand!r}")
        name = str(r["name"]) if "name" in r and r["name"] not in (None, "", ".") else f"{r['chrom']}:{start}-{end}"
        out.append((i, str(r["chrom"]), start, end, name, strand))
    return out


def read_regions(fasta: Optional[str] = None, bed: Optional[str] = None, genome: Optional[str] = None,
                 width: Optional[int] = None) -> _Regions:
    """Regions from a FASTA file of sequences, or from a BED file and a genome FASTA.

    All regions must have one length: pass ``width`` to resize BED intervals around their
    centres. Every interval is checked against the genome (chromosome present, inside it) before
    anything is computed.

    Args:
        fasta: FASTA file whose records are the sequences (names = record names). Default None.
        bed: BED file (chrom, start, end[, name, score, strand]; 0-based, half-open; gzip read
            transparently) or a DataFrame of intervals (chrom, start, end[, name][, strand]). Default None.
        genome: genome FASTA for ``bed``. Default None.
        width: resize BED intervals to this width around their centres. Default None.

    Returns:
        A region set with ``table`` (name, chrom, start, end, strand), ``seq_len`` and
        ``fetch(indices)``.

    Raises:
        RunError: missing or unreadable files, unknown chromosomes, intervals outside a
            chromosome, unequal lengths.
    """
    import pandas as pd

    if (fasta is None) == (bed is None):
        raise RunError("give the sequences either as --fasta FILE or as --bed FILE --genome FASTA")
    if fasta is not None:
        if genome is not None or width is not None:
            raise RunError("--genome and --width go with --bed, not with --fasta")
        fa = _open_fasta(fasta, "--fasta")
        names = list(fa.keys())
        if not names:
            raise RunError(f"--fasta: {fasta!r} has no sequences")
        lengths = [len(fa[n]) for n in names]
        table = pd.DataFrame({"name": names, "chrom": names, "start": 0, "end": lengths, "strand": "+"})
        if len(set(lengths)) > 1:
            j = next(i for i, n in enumerate(lengths) if n != lengths[0])
            raise RunError(
                f"--fasta: sequences must all have the same length: {names[0]!r} has {lengths[0]} bp, "
                f"{names[j]!r} has {lengths[j]} bp"
            )
        return _Regions(table, fa, "fasta", {"fasta": os.path.abspath(fasta)})

    if genome is None:
        raise RunError("--bed needs --genome FASTA (the genome the intervals refer to)")
    records = _frame_records(bed) if not isinstance(bed, (str, os.PathLike)) else _parse_bed(os.fspath(bed))
    fa = _open_fasta(genome, "--genome")
    chrom_len = {k: len(fa[k]) for k in fa.keys()}
    rows = []
    for lineno, chrom, start, end, name, strand in records:
        if chrom not in chrom_len:
            known = ", ".join(list(chrom_len)[:5]) + (", ..." if len(chrom_len) > 5 else "")
            raise RunError(f"--bed: {bed}:{lineno}: unknown chromosome {chrom!r} (the genome has {known})")
        if width is not None:
            centre = (start + end) // 2
            start = centre - width // 2
            end = start + width
            if start < 0:
                raise RunError(
                    f"--bed: {bed}:{lineno}: {chrom}:{start}-{end} (resized to --width {width}) starts before "
                    f"the beginning of {chrom}"
                )
        if end > chrom_len[chrom]:
            raise RunError(
                f"--bed: {bed}:{lineno}: interval {chrom}:{start}-{end} runs past the end of {chrom} "
                f"(length {chrom_len[chrom]})"
            )
        rows.append((name, chrom, start, end, strand))
    table = pd.DataFrame(rows, columns=["name", "chrom", "start", "end", "strand"])
    lengths = (table["end"] - table["start"]).to_numpy()
    if (lengths != lengths[0]).any():
        j = int(np.flatnonzero(lengths != lengths[0])[0])
        raise RunError(
            f"--bed: intervals must all have the same length ({table.name[0]!r} is {lengths[0]} bp, "
            f"{table.name[j]!r} is {lengths[j]} bp); pass --width to resize them around their centres"
        )
    if lengths[0] == 0:
        raise RunError("--bed: the intervals are empty (length 0)")
    info = {"bed": os.path.abspath(bed) if isinstance(bed, (str, os.PathLike)) else "<DataFrame>",
            "genome": os.path.abspath(genome), "width": width}
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
        RunError: the file is missing or cannot be read as that kind of model, or the function
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
                raise RunError(
                    f"--model: {spec!r} is a gReLU checkpoint, but gReLU is not installed (pip install "
                    "gReLU), or export the model to TorchScript/torch.export"
                ) from None
            try:
                model = LightningModel.load_from_checkpoint(spec, map_location="cpu")
            except Exception as e:
                raise RunError(f"--model: cannot load gReLU checkpoint {spec!r}: {_first_line(e)}") from None
        elif ext == ".pt2":
            ident["kind"] = "torch.export"
            try:
                with _quiet_logger("torch.export"):  # it logs a traceback before raising
                    model = _wrap_exported(torch.export.load(spec).module())
            except Exception as e:
                raise RunError(f"--model: cannot read {spec!r} as a torch.export program (.pt2): {_first_line(e)}") from None
        else:
            ident["kind"] = "torchscript"
            try:
                model = torch.jit.load(spec, map_location="cpu")
            except Exception as e:
                raise RunError(
                    f"--model: cannot read {spec!r} as a TorchScript file (torch.jit.save): {_first_line(e)}; "
                    "for other models pass module:function"
                ) from None
        if isinstance(model, torch.nn.Module) and not isinstance(model, ExportedModule):
            model.eval()
        ident["weights"] = _weights_fingerprint(model)
        return model, ident
    if os.path.isdir(spec):
        raise RunError(f"--model: {spec!r} is a folder, not a model file")
    if ":" not in spec:
        raise RunError(f"--model: file {spec!r} does not exist (nor is it a module:function reference)")
    target, _, func_name = spec.rpartition(":")
    if not target or not func_name.isidentifier():
        raise RunError(f"--model: {spec!r} is neither an existing file nor a module:function reference")
    try:
        if target.endswith(".py"):
            if not os.path.exists(target):
                raise RunError(f"--model: file {target!r} does not exist")
            mod_spec = importlib.util.spec_from_file_location(f"_basewise_model_{abs(hash(target))}", target)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())  # like `python -m`: modules in the working folder
            module = importlib.import_module(target)
    except RunError:
        raise
    except Exception as e:
        raise RunError(f"--model: cannot import {target!r}: {type(e).__name__}: {_first_line(e)}") from None
    fn = getattr(module, func_name, None)
    if fn is None or not callable(fn):
        raise RunError(f"--model: {target!r} has no function {func_name!r}")
    try:
        model = fn()
    except Exception as e:
        raise RunError(f"--model: {spec}() raised {type(e).__name__}: {_first_line(e)}") from None
    if not callable(model):
        raise RunError(f"--model: {spec}() returned {type(model).__name__}, not a model (a callable module)")
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
# what one chunk computes: a picklable job (the same code runs here and in Ray workers)
# ---------------------------------------------------------------------------------------------
def build_aggregate(options: Optional[Dict[str, Any]], model: Any):
    """gReLU-style ``Aggregate`` transform from its options (None when there are none)."""
    if not options or all(v is None for v in options.values()):
        return None
    from .transforms import Aggregate

    try:
        return Aggregate(model=model, **options)
    except (ValueError, IndexError, AssertionError, KeyError) as e:
        raise RunError(f"transform options: {_first_line(e)}") from None


@dataclasses.dataclass
class RegionJob:
    """What every chunk of a region run computes; picklable, so Ray workers run the same code.

    Attributes:
        kind: ``"ism"`` or ``"attribution"``.
        regions: the regions (their FASTA is reopened in each process).
        model: the model object (None when ``model_spec`` is given and not loaded yet).
        model_spec: a ``-m`` spec the worker loads itself (file path or module:function).
        transform: a prediction transform object, or None.
        transform_options: ``Aggregate`` options, built against the model in each process.
        score_kwargs: keyword arguments of ``ISM_predict`` / ``get_attributions``.
        sys_path: folders prepended to ``sys.path`` where the model is loaded (module:function).
    """

    kind: str
    regions: Any
    model: Any = None
    model_spec: Optional[str] = None
    transform: Any = None
    transform_options: Optional[Dict[str, Any]] = None
    score_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    sys_path: Tuple[str, ...] = ()

    def prepare(self) -> "RegionJob":
        """Load the model (from its spec) and build the transform, once per process."""
        if self.model is None:
            for p in self.sys_path:
                if p not in sys.path:
                    sys.path.insert(0, p)
            self.model, _ = load_model(self.model_spec)
        if self.transform is None and self.transform_options:
            self.transform = build_aggregate(self.transform_options, self.model)
        return self

    def score(self, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(idx, base indices (n, L) int8, scores) of the regions ``idx``."""
        from .sequence import to_indices

        seqs = self.regions.fetch(idx)
        if self.kind == "ism":
            from . import ism

            scores = ism.ISM_predict(seqs, self.model, prediction_transform=self.transform, return_df=False,
                                     progress=False, **self.score_kwargs)  # (n, P, 4, T, L_out)
        else:
            from .attribution import get_attributions

            scores = np.asarray(get_attributions(self.model, seqs, prediction_transform=self.transform,
                                                 **self.score_kwargs))  # (n, 4, L)
        return idx, to_indices(seqs), scores

    def probe(self) -> None:
        """The first region through the model, the transform and the requested method, before
        the output file is created: mismatches fail in a second, naming the culprit."""
        seq = self.regions.fetch(np.array([0]))
        try:
            if self.kind == "ism":
                kw = dict(self.score_kwargs)
                start = kw.pop("start_pos", 0)
                kw.pop("end_pos", None)
                kw.update(engine="full", batch_size=min(int(kw.get("batch_size", 64)), 64))
                _probe_ism(seq, self.model, prediction_transform=self.transform, start_pos=start,
                                end_pos=start + 1, progress=False, return_df=False, **kw)
            else:
                from .attribution import get_attributions

                kw = dict(self.score_kwargs)
                if kw.get("method") == "deepshap":
                    kw["n_shuffles"] = 1
                get_attributions(self.model, seq, prediction_transform=self.transform, **kw)
        except RunError:
            raise
        except Exception as e:  # anything the model raises on these inputs is a user-level mismatch
            raise RunError(_blame(e, self, seq)) from None


def _blame(e: BaseException, job: RegionJob, seq: List[str]) -> str:
    """One line naming the option a probe failure comes from (not always the model)."""
    msg = _first_line(e)
    name = job.regions.table["name"].iloc[0]
    if msg.startswith("devices:") or msg.startswith("device:"):
        return f"--devices: {msg.partition(':')[2].strip()}"
    if msg.startswith("dtype:"):
        return f"--dtype: {msg.partition(':')[2].strip()}"
    if msg.startswith("seqs:") or "not a valid DNA sequence" in msg:
        return f"region {name!r}: {msg}"
    if "target" in msg.split(":")[0]:
        return f"--target: {msg}"
    return (f"--model: it cannot score the regions ({job.regions.seq_len} bp) with these options: "
            f"{type(e).__name__}: {msg}")


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


def run_job(job: RegionJob, output: str, arguments: Dict[str, Any], *, info: Optional[Dict[str, Any]] = None,
            chunk_size: int = 256, overwrite: bool = False, compression: Optional[str] = "gzip",
            progress: Optional[bool] = None, ray: Any = None, workers: Optional[int] = None,
            threads_per_worker: Optional[int] = None, log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Compute ``job`` chunk by chunk into ``output`` (resuming it); one code path for the CLI
    and the Python API, local or on Ray.

    Returns:
        ``{"total", "computed", "resumed", "shape", "dtype", "startup_s", "chunks_s"}`` of the run
        (start-up: loading the model here, or starting the Ray workers; chunks: scoring and
        writing every chunk).

    Raises:
        RunError: a bad output path, a file written by another run, a scoring error.
        RunInterrupted: Ctrl-C or SIGTERM; finished chunks are saved.
    """
    from tqdm.auto import tqdm

    from .results import ResultsMismatchError, ResultsWriter

    log = log or (lambda msg: None)
    if os.path.exists(output) and os.path.isdir(output):
        raise RunError(f"--output: {output!r} is a folder")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise RunError(f"--output: folder {parent!r} does not exist")
    regions = job.regions
    import time

    ray_ctx = None
    t_start = time.perf_counter()
    if ray is not None:
        from . import _ray

        ray_ctx = _ray.RayRunner(job, ray, workers=workers, threads_per_worker=threads_per_worker)  # checks first
    timing = {"startup_s": time.perf_counter() - t_start}
    try:
        writer = ResultsWriter(output, job.kind, regions.table, regions.seq_len, arguments, overwrite=overwrite,
                               chunk_regions=chunk_size, compression=compression, info=info or {})
    except ResultsMismatchError as e:
        if ray_ctx is not None:
            ray_ctx.close()
        raise RunError(f"--output: {_first_line(e)} (--overwrite)") from None
    except OSError as e:
        if ray_ctx is not None:
            ray_ctx.close()
        raise RunError(f"--output: {_first_line(e)}") from None
    n = len(regions)
    with writer, _sigterm_as_interrupt():
        todo = writer.todo()
        already = n - len(todo)
        if writer.resumed:
            log(f"resuming {output}: {already} of {n} regions already done")
        bar = tqdm(total=n, initial=already, unit="region", file=sys.stderr, disable=progress is False,
                   delay=0 if progress else 2.0, dynamic_ncols=True, desc=f"basewise {job.kind}",
                   smoothing=0.1)
        chunks = [todo[s:s + chunk_size] for s in range(0, len(todo), chunk_size)]  # (n,) increasing

        def write(idx: np.ndarray, indices: np.ndarray, scores: np.ndarray) -> None:
            writer.write(idx, indices, scores)
            bar.update(len(idx))

        try:
            if ray_ctx is None:
                t0 = time.perf_counter()
                job.prepare()
                timing["startup_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            if ray_ctx is not None:
                ray_ctx.run(chunks, write)
            else:
                for idx in chunks:
                    write(*job.score(idx))
            timing["chunks_s"] = time.perf_counter() - t0
        except KeyboardInterrupt:
            bar.close()
            raise RunInterrupted(int(writer.done.sum()), n, output) from None
        except (ValueError, NotImplementedError, IndexError) as e:
            if isinstance(e, RunError):
                raise
            raise RunError(f"{job.kind}: {type(e).__name__}: {_first_line(e)}") from e
        finally:
            bar.close()
            if ray_ctx is not None:
                ray_ctx.close()
        shape = writer._f["scores"].shape if "scores" in writer._f else None
        dtype = writer._f["scores"].dtype if shape else None
    return {"total": n, "computed": n - already, "resumed": already, "shape": shape, "dtype": dtype, **timing}


def model_ident_for_compare(ident: Dict[str, Any]) -> Dict[str, Any]:
    """The part of a model's identity that must match on resume: what it computes (kind, file
    digest, function, weights digest), not how it was named (path, reference text)."""
    return {k: v for k, v in ident.items() if k not in ("path", "reference")}


def _model_for_run(model: Any) -> Tuple[Any, Dict[str, Any], Optional[str], Tuple[str, ...]]:
    """(model object, identity, spec for workers, sys.path for workers) of a model or a spec."""
    if isinstance(model, (str, os.PathLike)):
        spec = os.fspath(model)
        obj, ident = load_model(spec)
        target, sep, fn = spec.rpartition(":")
        if os.path.exists(spec):
            wspec = os.path.abspath(spec)
        elif sep and target.endswith(".py"):
            wspec = os.path.abspath(target) + ":" + fn
        else:
            wspec = spec
        return obj, ident, wspec, (os.getcwd(),)
    if model is None or not callable(model):
        raise RunError(f"model: expected a model (nn.Module or callable) or a -m spec string, got {type(model).__name__}")
    ident = {"kind": "object", "type": type(model).__qualname__, "weights": _weights_fingerprint(model)}
    return model, ident, None, ()


def _check_ray(ray: Any) -> None:
    """With ``ray=``, Ray must be importable: one clear error before any file or model is read."""
    if ray is not None:
        from ._ray import _import_ray

        _import_ray()


def _regions_for_run(regions: Any, genome: Optional[str], fasta: Optional[str], width: Optional[int]):
    if isinstance(regions, _Regions):
        return regions
    return read_regions(fasta=fasta, bed=regions, genome=genome, width=width)


def _probe_run_open(job: RegionJob, output: str, arguments: Dict[str, Any], info: Dict[str, Any], **run_kw: Any):
    """Probe the first region, run the chunks, return the opened results with ``run_summary``."""
    from .results import open_results

    job.probe()
    summary = run_job(job, output, arguments, info=info, **run_kw)
    res = open_results(output)
    res.run_summary = summary  # total, computed, resumed, shape, dtype of this call
    return res


def ism_regions(model: Any, regions: Any = None, genome: Optional[str] = None, output: str = "ism.h5", *,
                fasta: Optional[str] = None, width: Optional[int] = None,
                prediction_transform: Optional[Callable] = None, transform_options: Optional[Dict[str, Any]] = None,
                start_pos: int = 0, end_pos: Optional[int] = None, compare_func: Optional[str] = None,
                devices: Any = "cpu", batch_size: int = 64, engine: str = "auto", dtype: Any = None,
                chunk_size: int = 256, overwrite: bool = False, compression: Optional[str] = "gzip",
                progress: Optional[bool] = None, ray: Any = None, workers: Optional[int] = None,
                threads_per_worker: Optional[int] = None, _info: Optional[Dict[str, Any]] = None,
                _log: Optional[Callable[[str], None]] = None):
    """Saturation ISM of many regions into a resumable HDF5 results file (``basewise ism``).

    Args:
        model: a model (``nn.Module``, gReLU LightningModel or callable) or a spec as ``-m``
            takes it (TorchScript file, ``.pt2``, ``.ckpt``, ``module:function``).
        regions: a DataFrame of intervals (chrom, start, end[, name][, strand]) or a BED path.
            Default None (then ``fasta``).
        genome: genome FASTA for ``regions``. Default None.
        output: results file; resumed if it exists. Default "ism.h5".
        fasta: a FASTA of equally long sequences instead of regions + genome. Default None.
        width: resize intervals to this width around their centres. Default None.
        prediction_transform: transform object applied to the model output. Default None.
        transform_options: gReLU ``Aggregate`` options (tasks, except_tasks, positions,
            length_aggfunc, task_aggfunc, weight) built against the model. Default None.
        start_pos, end_pos, compare_func, devices, batch_size, engine, dtype: as for
            :func:`basewise.ISM_predict`. Defaults 0, None, None, "cpu", 64, "auto", None.
        chunk_size: regions computed and written at a time. Default 256.
        overwrite: replace ``output`` instead of resuming it. Default False.
        compression: "gzip", "lzf" or None. Default "gzip".
        progress: tqdm bar on stderr (None: after 2 s). Default None.
        ray: None (this process), ``"local"`` (a Ray instance on this machine, on 127.0.0.1,
            stopped after), ``"auto"`` (the running cluster) or a ``ray://host:port`` address;
            an already initialised Ray is used as it is. Default None.
        workers: Ray model replicas. Default None (one per GPU; without GPUs one per
            ``threads_per_worker`` CPUs).
        threads_per_worker: torch threads per Ray worker. Default None (2 on CPU workers; the
            CPUs per GPU on GPU workers, at most 8).

    Returns:
        The opened results (:class:`basewise.results.Results`; use it as a context manager);
        its ``run_summary`` says how many regions this call computed and how many it resumed.

    Example:
        >>> import os, tempfile, torch
        >>> d = tempfile.mkdtemp(); fa = os.path.join(d, "s.fa")
        >>> _ = open(fa, "w").write(">a\\nACGTACGT\\n>b\\nTTGACCAA\\n")
        >>> m = torch.nn.Sequential(torch.nn.Conv1d(4, 1, 3), torch.nn.AdaptiveAvgPool1d(1))
        >>> with ism_regions(m, fasta=fa, output=os.path.join(d, "r.h5"), progress=False) as r:
        ...     r.scores.shape
        (2, 8, 4, 1, 1)
    """
    from .ism import ENGINES, _check_dtype, _check_compare

    _check_ray(ray)
    regions_ = _regions_for_run(regions, genome, fasta, width)
    L = regions_.seq_len
    end = L if end_pos is None else end_pos
    if not (isinstance(start_pos, (int, np.integer)) and isinstance(end, (int, np.integer)) and 0 <= start_pos < end <= L):
        raise RunError(f"--start-pos/--end-pos: expected 0 <= start < end <= {L} (the sequence length), got {start_pos}, {end}")
    try:
        _check_compare(compare_func)
    except ValueError as e:
        raise RunError(f"--compare: {_first_line(e)}") from None
    if engine not in ENGINES:
        raise RunError(f"--engine: expected one of {list(ENGINES)}, got {engine!r}")
    obj, ident, wspec, sys_path = _model_for_run(model)
    try:
        _check_dtype(dtype, obj)
    except ValueError as e:
        raise RunError(f"--dtype: {_first_line(e).partition(':')[2].strip()}") from None
    transform = prediction_transform if prediction_transform is not None else build_aggregate(transform_options, obj)
    dtype_name = None if dtype is None else str(dtype).replace("torch.", "")
    arguments = {"command": "ism", "model": model_ident_for_compare(ident), "transform": transform_options,
                 "start_pos": int(start_pos), "end_pos": int(end), "compare_func": compare_func, "dtype": dtype_name}
    if prediction_transform is not None:
        arguments["transform_object"] = type(prediction_transform).__qualname__
    job = RegionJob("ism", regions_, model=obj, model_spec=wspec, transform=transform,
                    transform_options=transform_options if prediction_transform is None else None,
                    score_kwargs=dict(start_pos=int(start_pos), end_pos=int(end), compare_func=compare_func,
                                      devices=devices, batch_size=batch_size, engine=engine, dtype=dtype),
                    sys_path=sys_path)
    info = {"inputs": regions_.info, "model": wspec or ident.get("type"), **(_info or {})}
    return _probe_run_open(job, output, arguments, info, chunk_size=chunk_size, overwrite=overwrite,
                           compression=compression, progress=progress, ray=ray, workers=workers,
                           threads_per_worker=threads_per_worker, log=_log)


def attribute_regions(model: Any, regions: Any = None, genome: Optional[str] = None,
                      output: str = "attributions.h5", *, fasta: Optional[str] = None, width: Optional[int] = None,
                      prediction_transform: Optional[Callable] = None,
                      transform_options: Optional[Dict[str, Any]] = None, method: str = "deepshap",
                      hypothetical: bool = False, correct_grad: bool = False, n_shuffles: int = 20,
                      seed: Optional[int] = None, target: Any = None, batch_size: Optional[int] = None,
                      device: Any = "cpu", chunk_size: int = 256, overwrite: bool = False,
                      compression: Optional[str] = "gzip", progress: Optional[bool] = None, ray: Any = None,
                      workers: Optional[int] = None, threads_per_worker: Optional[int] = None,
                      _info: Optional[Dict[str, Any]] = None, _log: Optional[Callable[[str], None]] = None):
    """Attributions of many regions into a resumable HDF5 results file (``basewise attribute``).

    Arguments as for :func:`ism_regions` (regions, genome, output, fasta, width, transforms,
    chunking, ``ray=``), plus those of :func:`basewise.get_attributions`: ``method``
    ("deepshap"), ``hypothetical`` (False), ``correct_grad`` (False), ``n_shuffles`` (20),
    ``seed`` (None: drawn once per run, so every chunk and every Ray worker uses the same one;
    recorded in the file's info), ``target`` (None), ``batch_size`` (None), ``device`` ("cpu").

    Returns:
        The opened results (:class:`basewise.results.Results`).

    Example:
        >>> import os, tempfile, torch
        >>> d = tempfile.mkdtemp(); fa = os.path.join(d, "s.fa")
        >>> _ = open(fa, "w").write(">a\\nACGTACGT\\n")
        >>> m = torch.nn.Sequential(torch.nn.Conv1d(4, 1, 3), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten())
        >>> with attribute_regions(m, fasta=fa, output=os.path.join(d, "a.h5"), method="saliency",
        ...                        progress=False) as r:
        ...     r.scores.shape
        (1, 4, 8)
    """
    from .attribution import METHODS

    _check_ray(ray)
    regions_ = _regions_for_run(regions, genome, fasta, width)
    if method not in METHODS:
        raise RunError(f"--method: expected one of {list(METHODS)}, got {method!r}")
    obj, ident, wspec, sys_path = _model_for_run(model)
    if method == "deepshap" and ident["kind"] in ("torchscript", "torch.export"):
        raise RunError(
            f"--method deepshap: a {ident['kind']} model hides its layers (nn.ReLU, ...) from DeepLIFT's "
            "rules, so it would be explained as if it were linear; pass the model as module:function "
            "(or a gReLU .ckpt), or use another --method")
    transform = prediction_transform if prediction_transform is not None else build_aggregate(transform_options, obj)
    drawn = None
    if seed is None and method == "deepshap":
        drawn = int(np.random.SeedSequence().entropy % (2 ** 31))
    arguments = {"command": "attribute", "model": model_ident_for_compare(ident), "transform": transform_options,
                 "method": method, "hypothetical": hypothetical, "correct_grad": correct_grad,
                 "n_shuffles": n_shuffles, "seed": seed, "target": target}
    if prediction_transform is not None:
        arguments["transform_object"] = type(prediction_transform).__qualname__
    kw: Dict[str, Any] = dict(device=device, method=method, correct_grad=correct_grad, hypothetical=hypothetical,
                              n_shuffles=n_shuffles, seed=seed if seed is not None else drawn)
    if target is not None:
        kw["target"] = target
    if batch_size is not None:
        kw["batch_size"] = batch_size
    job = RegionJob("attribution", regions_, model=obj, model_spec=wspec, transform=transform,
                    transform_options=transform_options if prediction_transform is None else None,
                    score_kwargs=kw, sys_path=sys_path)
    info = {"inputs": regions_.info, "model": wspec or ident.get("type"), **(_info or {})}
    if drawn is not None:
        info["deepshap_seed_drawn"] = drawn
    return _probe_run_open(job, output, arguments, info, chunk_size=chunk_size, overwrite=overwrite,
                           compression=compression, progress=progress, ray=ray, workers=workers,
                           threads_per_worker=threads_per_worker, log=_log)

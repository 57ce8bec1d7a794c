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
import re
import signal
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .ism import ISM_predict as _probe_ism  # bound at import: the probe is not a chunk of the run

__all__ = ["ism_regions", "attribute_regions", "attention_regions", "read_regions", "load_model", "RunError",
           "RunInterrupted"]


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
    """Regions to score: a table (name, chrom, start, end, strand) and a way to fetch them.

    ``skipped`` lists the intervals left out by ``on_bad_interval="skip"`` (name, chrom, start,
    end, reason); ``padded`` counts the regions that run past a chromosome end and are filled
    with N (``on_bad_interval="pad"``). ``iupac="n"`` reads letters other than ACGTN as N.
    """

    def __init__(self, table, fasta, kind: str, info: Dict[str, Any], iupac: str = "error",
                 skipped: Optional[List[Dict[str, Any]]] = None, padded: int = 0):
        self.table = table  # pandas DataFrame
        self.fasta = fasta  # open pyfaidx.Fasta
        self.fasta_path = os.path.abspath(fasta.filename)
        self.kind = kind  # "fasta" or "bed"
        self.info = info
        self.iupac = iupac
        self.skipped = list(skipped or [])
        self.padded = int(padded)
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

    def _raw(self, i: int) -> str:
        """Region ``i`` as it is in the FASTA (upper case, + strand), N-padded past the ends."""
        if self.fasta is None:
            self.fasta = _open_fasta(self.fasta_path, "--genome" if self.kind == "bed" else "--fasta", check_index=False)
        chrom, start, end = self.table["chrom"].iat[i], int(self.table["start"].iat[i]), int(self.table["end"].iat[i])
        record = self.fasta[chrom]
        n = len(record)
        lo, hi = max(0, start), min(end, n)
        seq = str(record[lo:hi]).upper() if hi > lo else ""
        if start < 0 or end > n:  # only with on_bad_interval="pad"
            seq = "N" * (lo - start) + seq + "N" * (end - max(hi, lo))
        return seq

    def fetch(self, idx: np.ndarray) -> List[str]:
        """Sequences (upper case, reverse-complemented on "-") of the regions ``idx``."""
        from .sequence import reverse_complement

        out = []
        for i in np.asarray(idx, dtype=np.int64):
            seq = self._raw(int(i))
            if self.iupac == "n":
                seq = _IUPAC_RE.sub("N", seq)
            if self.table["strand"].iat[int(i)] == "-":
                seq = reverse_complement(seq)
            out.append(seq)
        return out

    def check_letters(self, log: Callable[[str], None] = lambda msg: None) -> int:
        """Scan every region for letters other than ACGTN before the run starts (cheap next to
        the model). With ``iupac="error"`` the first one is a :class:`RunError` naming the
        region, its coordinates, the letter and its offset; with ``iupac="n"`` returns how many
        letters will be read as N."""
        replaced = 0
        for i in range(len(self.table)):
            seq = self._raw(i)
            m = _IUPAC_RE.search(seq)
            if m is None:
                continue
            if self.iupac == "n":
                replaced += len(_IUPAC_RE.findall(seq))
                continue
            row = self.table.iloc[i]
            letter, off = m.group(0), m.start()
            where = f" ({row['chrom']}:{int(row['start']) + off}, + strand)" if self.kind == "bed" else ""
            raise RunError(
                f"region {row['name']!r} ({row['chrom']}:{row['start']}-{row['end']}): letter {letter!r} at offset "
                f"{off}{where} is not A, C, G, T or N (an IUPAC ambiguity code?); pass --iupac n "
                "(iupac='n') to read such letters as N")
        if replaced:
            log(f"--iupac n: {replaced} letters other than ACGTN are read as N")
        return replaced


_IUPAC_RE = re.compile("[^ACGTN]")  # a letter other than A, C, G, T, N (upper case)


def _open_fasta(path: str, option: str, check_index: bool = True):
    """Open a FASTA with pyfaidx. An index (``.fai``) older than the FASTA is stale (the FASTA
    was replaced): it is rebuilt when its folder is writable, else the error says which file to
    delete. Workers open with ``check_index=False`` (the driver has checked it)."""
    if not os.path.exists(path):
        raise RunError(f"{option}: file {path!r} does not exist")
    if os.path.isdir(path):
        raise RunError(f"{option}: {path!r} is a folder, not a FASTA file")
    import pyfaidx

    fai = path + ".fai"
    rebuild = False
    if check_index and os.path.exists(fai) and os.path.getmtime(fai) < os.path.getmtime(path):
        if not os.access(os.path.dirname(os.path.abspath(fai)), os.W_OK) or not os.access(fai, os.W_OK):
            raise RunError(f"{option}: the index {fai!r} is older than {path!r} (the FASTA changed after it was "
                           "indexed) and cannot be rebuilt here; delete it or run `samtools faidx` again")
        rebuild = True
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyfaidx warns about the stale index we rebuild
            return pyfaidx.Fasta(path, sequence_always_upper=False, rebuild=rebuild)
    except Exception as e:  # pyfaidx raises many types (FastaIndexingError, ValueError, OSError)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{option}: cannot read {path!r} as FASTA (pyfaidx: {msg})") from None


def _parse_bed(path: str) -> List[Tuple[int, str, int, int, str, str, Optional[int]]]:
    """(line number, chrom, start, end, name, strand, summit) of each BED record; summit is the
    narrowPeak column 10 (offset from start; None when absent or -1)."""
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
            summit = None
            if len(f) >= 10:  # narrowPeak: column 10 is the summit's offset from start (-1: none)
                try:
                    summit = int(f[9])
                except ValueError:
                    raise RunError(f"--bed: {path}:{lineno}: column 10 (narrowPeak summit offset) must be an "
                                   f"integer, got {f[9]!r}") from None
                if summit < 0:
                    summit = None
                elif summit > end - start:
                    raise RunError(f"--bed: {path}:{lineno}: summit offset {summit} lies outside the peak "
                                   f"{f[0]}:{start}-{end}")
            out.append((lineno, f[0], start, end, name, strand, summit))
    if not out:
        raise RunError(f"--bed: {path!r} has no intervals")
    return out


def _frame_records(df: Any) -> List[Tuple[int, str, int, int, str, str, Optional[int]]]:
    """BED-like records from a DataFrame of intervals (chrom, start, end[, name][, strand][, summit])."""
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
        summit = r.get("summit")
        summit = None if summit is None or (isinstance(summit, float) and np.isnan(summit)) or int(summit) < 0 else int(summit)
        out.append((i, str(r["chrom"]), start, end, name, strand, summit))
    return out


CENTERS = ("auto", "summit", "midpoint")
BAD_INTERVALS = ("error", "skip", "pad")
IUPAC = ("error", "n")


def read_regions(fasta: Optional[str] = None, bed: Optional[str] = None, genome: Optional[str] = None,
                 width: Optional[int] = None, *, center: str = "auto", on_bad_interval: str = "error",
                 iupac: str = "error") -> _Regions:
    """Regions from a FASTA file of sequences, or from a BED file and a genome FASTA.

    All regions must have one length: pass ``width`` to resize BED intervals around their
    centres (the narrowPeak summit, column 10, when there is one; else the midpoint). Every
    interval is checked against the genome (chromosome present, inside it) before anything is
    computed.

    Args:
        fasta: FASTA file whose records are the sequences (names = record names). Default None.
        bed: BED file (chrom, start, end[, name, score, strand, ...]; 0-based, half-open; gzip
            read transparently; narrowPeak's 10th column is the summit offset) or a DataFrame of
            intervals (chrom, start, end[, name][, strand][, summit]). Default None.
        genome: genome FASTA for ``bed``. Default None.
        width: resize BED intervals to this width around their centres. Default None.
        center: where ``width`` centres: "summit" (narrowPeak column 10; an error without it),
            "midpoint", or "auto" (the summit where the file has one, else the midpoint).
            Default "auto".
        on_bad_interval: an interval on an unknown chromosome or (after resizing) outside its
            chromosome: "error" stops, "skip" leaves it out (listed in ``skipped``, in the
            results file's info and in the run summary), "pad" keeps it and fills the part past
            the chromosome's ends with N (an unknown chromosome is still skipped). Default "error".
        iupac: letters other than ACGTN (IUPAC codes such as M, R, Y): "error" (found by
            :meth:`_Regions.check_letters` before the run, naming region and offset) or "n" (read
            as N). Default "error".

    Returns:
        A region set with ``table`` (name, chrom, start, end, strand), ``seq_len``,
        ``skipped``, ``padded`` and ``fetch(indices)``.

    Raises:
        RunError: missing or unreadable files, unknown chromosomes, intervals outside a
            chromosome, unequal lengths, bad options.
    """
    import pandas as pd

    if center not in CENTERS:
        raise RunError(f"--center: expected one of {list(CENTERS)}, got {center!r}")
    if on_bad_interval not in BAD_INTERVALS:
        raise RunError(f"--on-bad-interval: expected one of {list(BAD_INTERVALS)}, got {on_bad_interval!r}")
    if iupac not in IUPAC:
        raise RunError(f"--iupac: expected one of {list(IUPAC)}, got {iupac!r}")
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
        return _Regions(table, fa, "fasta", {"fasta": os.path.abspath(fasta)}, iupac=iupac)

    if genome is None:
        raise RunError("--bed needs --genome FASTA (the genome the intervals refer to)")
    records = _frame_records(bed) if not isinstance(bed, (str, os.PathLike)) else _parse_bed(os.fspath(bed))
    has_summit = any(r[6] is not None for r in records)
    if center == "summit" and not has_summit:
        raise RunError("--center summit: the intervals have no summit (narrowPeak column 10, or a 'summit' "
                       "column); use --center midpoint")
    if center == "summit" and width is None:
        raise RunError("--center summit: centring needs --width W (the size of the window around the summit)")
    fa = _open_fasta(genome, "--genome")
    chrom_len = {k: len(fa[k]) for k in fa.keys()}
    rows, skipped, padded = [], [], 0
    where = bed if isinstance(bed, (str, os.PathLike)) else "regions"
    for lineno, chrom, start, end, name, strand, summit in records:
        problem = None
        if chrom not in chrom_len:
            known = ", ".join(list(chrom_len)[:5]) + (", ..." if len(chrom_len) > 5 else "")
            problem = f"unknown chromosome {chrom!r} (the genome has {known})"
        if width is not None:
            centre = start + summit if (center != "midpoint" and summit is not None) else (start + end) // 2
            start = centre - width // 2
            end = start + width
        if problem is None and start < 0:
            problem = (f"{chrom}:{start}-{end}" + (f" (resized to --width {width})" if width is not None else "")
                       + f" starts before the beginning of {chrom}")
        if problem is None and end > chrom_len[chrom]:
            problem = f"interval {chrom}:{start}-{end} runs past the end of {chrom} (length {chrom_len[chrom]})"
        if problem is not None:
            if on_bad_interval == "error":
                raise RunError(f"--bed: {where}:{lineno}: {problem}; --on-bad-interval skip or pad to go on without it")
            if on_bad_interval == "skip" or chrom not in chrom_len:
                skipped.append({"line": int(lineno), "name": name, "chrom": chrom, "start": int(start),
                                "end": int(end), "reason": problem})
                continue
            padded += 1
        rows.append((name, chrom, start, end, strand))
    if not rows:
        raise RunError(f"--bed: no interval is left to score ({len(skipped)} skipped by --on-bad-interval; the "
                       f"first: {skipped[0]['reason']})")
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
            "genome": os.path.abspath(genome), "width": width,
            "center": (("summit" if has_summit else "midpoint") if center == "auto" else center) if width else None}
    return _Regions(table, fa, "bed", info, iupac=iupac, skipped=skipped, padded=padded)


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
                if _is_torch_save(spec):
                    raise RunError(
                        f"--model: {spec!r} was written by torch.save (a pickled module or a state_dict), which "
                        "cannot be loaded safely without its code; write a file.py with `def build(): m = "
                        "MyModel(...); m.load_state_dict(torch.load(PATH)); return m` (or return torch.load(PATH, "
                        "weights_only=False) for a whole pickled module you trust) and pass -m file.py:build, or "
                        "save the model with torch.export.save (.pt2) or torch.jit.save") from None
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


def _is_torch_save(path: str) -> bool:
    """True for a torch.save file (a zip with data.pkl and no TorchScript code, or a legacy pickle)."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            names = zipfile.ZipFile(path).namelist()
            return any(n.endswith("data.pkl") for n in names) and not any("/code/" in n or n.endswith("constants.pkl")
                                                                          for n in names)
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x80\x02"  # pickle protocol 2: torch.save's legacy format
    except OSError:
        return False


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
        msg = _first_line(e)
        option, sep, rest = msg.partition(":")
        if sep and option in ("tasks", "except_tasks", "positions", "length_aggfunc", "task_aggfunc", "weight"):
            extra = _task_list(model) if "task" in option and "name" in rest else ""
            raise RunError(f"--{option.replace('_', '-')}:{rest}{extra}") from None
        raise RunError(f"transform options: {msg}{_task_list(model) if 'task' in msg else ''}") from None


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

    def score(self, idx: np.ndarray, on_mutants: Optional[Callable[[int], None]] = None
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(idx, base indices (n, L) int8, scores) of the regions ``idx``; ``on_mutants(k)`` is
        called as ISM mutants land (progress within a chunk)."""
        from .sequence import to_indices

        seqs = self.regions.fetch(idx)
        try:
            scores = self._score(seqs, on_mutants)
        except (ValueError, RuntimeError, IndexError, TypeError) as e:
            if isinstance(e, RunError):
                raise
            raise self._culprit(idx, seqs, e) from e
        return idx, to_indices(seqs), scores

    def _culprit(self, idx: np.ndarray, seqs: List[str], e: BaseException) -> BaseException:
        """The error of a failed chunk, naming the first region that fails on its own (the
        original error when none does, e.g. out of memory for the whole chunk)."""
        if len(seqs) > 1:
            for i, seq in zip(idx, seqs):
                try:
                    self._score([seq], None)
                except Exception as e1:  # noqa: BLE001 - any failure of this region names it
                    e = e1
                    break
            else:
                return e
        else:
            i = idx[0]
        row = self.regions.table.iloc[int(i)]
        return RunError(f"region {row['name']!r} ({row['chrom']}:{row['start']}-{row['end']}): "
                        f"{type(e).__name__}: {_first_line(e)}")

    def _score(self, seqs: List[str], on_mutants: Optional[Callable[[int], None]]) -> np.ndarray:
        if self.kind == "attention":
            from .attention import get_attention_scores

            kw = dict(self.score_kwargs)
            out = get_attention_scores(self.model, seqs, **kw)  # (B, blocks, H, L', S); B dropped when 1
            if len(seqs) == 1:
                out = out[None]
            if kw.get("average_heads"):
                out = out[:, :, None]  # (B, blocks, 1, L', S): the file's axes stay the same
            return out
        if self.kind == "ism":
            from . import ism

            scores = ism.ISM_predict(seqs, self.model, prediction_transform=self.transform, return_df=False,
                                     progress=on_mutants or False, **self.score_kwargs)  # (n, P, 4, T, L_out)
        else:
            from .attribution import get_attributions

            scores = np.asarray(get_attributions(self.model, seqs, prediction_transform=self.transform,
                                                 **self.score_kwargs))  # (n, 4, L)
        return scores

    def probe(self) -> Tuple[Tuple[int, ...], np.dtype]:
        """The first region through the model, the transform and the requested method, before
        the output file is created: mismatches fail in a second, naming the culprit.

        Returns:
            The shape and dtype of one region's scores (for the output-size estimate).
        """
        seq = self.regions.fetch(np.array([0]))
        try:
            if self.kind == "attention":
                out = self._score(seq, None)
                return tuple(out.shape[1:]), out.dtype
            if self.kind == "ism":
                kw = dict(self.score_kwargs)
                start = kw.pop("start_pos", 0)
                kw.pop("end_pos", None)
                end = self.score_kwargs.get("end_pos") or self.regions.seq_len
                kw.update(engine="full", batch_size=min(int(kw.get("batch_size", 64)), 64))
                out = _probe_ism(seq, self.model, prediction_transform=self.transform, start_pos=start,
                                 end_pos=start + 1, progress=False, return_df=False, **kw)  # (1, 1, 4, T, L_out)
                return (end - start,) + tuple(out.shape[2:]), np.dtype(np.float32)
            else:
                from .attribution import get_attributions

                kw = dict(self.score_kwargs)
                if kw.get("method") == "deepshap":
                    kw["n_shuffles"] = 1
                out = np.asarray(get_attributions(self.model, seq, prediction_transform=self.transform, **kw))
                return tuple(out.shape[1:]), out.dtype
        except RunError:
            raise
        except Exception as e:  # anything the model raises on these inputs is a user-level mismatch
            raise RunError(_blame(e, self, seq)) from None


def _task_list(model: Any) -> str:
    """' (names: a, b, ...)' of a model with task names, else ''."""
    from .transforms import _task_names

    names = _task_names(model)
    if not names:
        return ""
    shown = ", ".join(map(str, names[:12])) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    return f"; task names: {shown}"


def _blame(e: BaseException, job: RegionJob, seq: List[str]) -> str:
    """One line naming the option a probe failure comes from (not always the model)."""
    msg = _first_line(e)
    name = job.regions.table["name"].iloc[0]
    if msg.startswith("devices:") or msg.startswith("device:"):
        option = "--devices" if job.kind == "ism" else "--device"
        return f"{option}: {msg.partition(':')[2].strip()}"
    if msg.startswith("dtype:"):
        return f"--dtype: {msg.partition(':')[2].strip()}"
    if msg.startswith("seqs:") or "not a valid DNA sequence" in msg:
        return f"region {name!r}: {msg}"
    m = re.match(r"Aggregate (tasks|except_tasks|positions): (.*) out of range for a prediction with (\d+) (\w[\w ]*)", msg)
    if m:
        option = "--" + m.group(1).replace("_", "-")
        size = int(m.group(3))
        what = "tasks" if m.group(1) != "positions" else "output bins"
        extra = _task_list(job.model) if what == "tasks" else ""
        return f"{option}: {m.group(2)} out of range: the model has {size} {what} (0 to {size - 1}){extra}"
    if msg.startswith(("tasks:", "except_tasks:", "positions:")):
        option, _, rest = msg.partition(":")
        return f"--{option.replace('_', '-')}:{rest}" + (_task_list(job.model) if "task" in option else "")
    many = (type(e).__name__ == "TargetError" or "n_outputs" in msg or "one value per output" in msg
            or "explain one number" in msg)
    if job.kind == "attribution" and many:
        shape = re.search(r"shape \(([^)]*)\)", msg)
        got = f" returns ({shape.group(1)}) per sequence" if shape else " returns more than one value per sequence"
        if job.score_kwargs.get("method") == "deepshap":
            return (f"--target: the model{got}; deepshap explains one task of a (T,) or (T, 1) output: reduce "
                    "the bins with --positions/--length-aggfunc (e.g. --length-aggfunc sum) and pick the task "
                    "with --target TASK or --tasks TASK")
        return (f"--target: the model{got}; pick one output with --target TASK[,BIN] or reduce the output "
                "with --tasks/--positions and --length-aggfunc/--task-aggfunc")
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

    progress_log = log  # plain progress lines for a CLI whose stderr is not a terminal
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
                               chunk_regions=chunk_size, compression=compression, info=info or {},
                               skipped=getattr(regions, "skipped", None))
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
        bar = _progress(tqdm, progress, n, already, f"basewise {job.kind}", progress_log)
        chunks = [todo[s:s + chunk_size] for s in range(0, len(todo), chunk_size)]  # (n,) increasing
        nan_count = [0]

        def write(idx: np.ndarray, indices: np.ndarray, scores: np.ndarray) -> None:
            writer.write(idx, indices, scores)
            if np.issubdtype(scores.dtype, np.floating):
                nan_count[0] += int(np.isnan(scores).sum())
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
                # the bar moves within a chunk too: by the fraction of a region's mutants
                per_region = 3.0 * (int(job.score_kwargs.get("end_pos") or regions.seq_len)
                                    - int(job.score_kwargs.get("start_pos") or 0))
                on_mutants = (lambda k: bar.update(k / per_region)) if job.kind == "ism" else None
                for idx in chunks:
                    before = bar.n
                    result = job.score(idx, on_mutants)
                    bar.n = before  # the chunk's exact count replaces the estimate
                    write(*result)
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
    return {"total": n, "computed": n - already, "resumed": already, "shape": shape, "dtype": dtype,
            "nan": nan_count[0], "skipped": len(getattr(regions, "skipped", [])),
            "padded": getattr(regions, "padded", 0), **timing}


class _LogProgress:
    """Progress for logs that are not a terminal (a batch job's stderr file): one plain line at
    most every ``every`` seconds, no carriage returns."""

    def __init__(self, total: int, initial: int, desc: str, log: Callable[[str], None], every: float = 30.0):
        import time

        self.total, self.n, self.desc, self.log, self.every = total, initial, desc, log, every
        self._t0 = self._last = time.monotonic()
        self._start = initial

    def update(self, k: float) -> None:
        import time

        self.n += k
        now = time.monotonic()
        if now - self._last >= self.every or self.n >= self.total:
            self._last = now
            rate = (self.n - self._start) / max(now - self._t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            self.log(f"{self.n:.0f}/{self.total} regions ({100 * self.n / self.total:.0f}%), {rate:.3g} regions/s, "
                     f"about {eta:.0f} s left")

    def close(self) -> None:
        pass


def _progress(tqdm: Any, progress: Optional[bool], total: int, initial: int, desc: str,
              log: Optional[Callable[[str], None]]):
    """A tqdm bar (``progress=None``: after 2 s); plain log lines instead when the CLI's stderr
    is not a terminal (``log`` given)."""
    if log is not None and progress is None and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return _LogProgress(total, initial, desc, log)
    return tqdm(total=total, initial=initial, unit="region", file=sys.stderr, disable=progress is False,
                delay=0 if progress else 2.0, dynamic_ncols=True, desc=desc, smoothing=0.1,
                unit_scale=True)  # fractional regions within a chunk print as 1.33, not 1.3333333


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


def _regions_for_run(regions: Any, genome: Optional[str], fasta: Optional[str], width: Optional[int],
                     center: str = "auto", on_bad_interval: str = "error", iupac: str = "error",
                     log: Optional[Callable[[str], None]] = None) -> _Regions:
    """Read the regions and check every letter of every region before anything is computed."""
    log = log or (lambda msg: None)
    if isinstance(regions, _Regions):
        r = regions
    else:
        r = read_regions(fasta=fasta, bed=regions, genome=genome, width=width, center=center,
                         on_bad_interval=on_bad_interval, iupac=iupac)
    if r.skipped:
        first = r.skipped[0]
        log(f"--on-bad-interval skip: {len(r.skipped)} interval(s) left out (first: line {first['line']}, "
            f"{first['name']}: {first['reason']}); they are listed in the results file (Results.skipped)")
    if r.padded:
        log(f"--on-bad-interval pad: {r.padded} region(s) run past a chromosome end and are filled with N")
    r.check_letters(log)
    return r


MAX_OUTPUT_BYTES = 100e9  # refuse (unless max_output_bytes=None / --yes) an output estimated above this


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def _check_output_size(job: RegionJob, shape: Tuple[int, ...], dtype: np.dtype, limit: Optional[float],
                       log: Optional[Callable[[str], None]]) -> None:
    """Say what the run will write, and refuse an estimate over ``limit`` bytes (uncompressed)."""
    n = len(job.regions)
    per_region = int(np.prod(shape)) * np.dtype(dtype).itemsize
    total = n * per_region
    if log is not None:
        log(f"{n} regions x scores {shape} {np.dtype(dtype).name} = {_human(total)} uncompressed "
            f"({_human(per_region)} per region)")
    if limit is not None and total > limit:
        hint = ("reduce the output with --length-aggfunc (e.g. sum or mean over the output bins), --tasks or "
                "--positions, or a narrower --start-pos/--end-pos" if job.kind == "ism" else
                "split the regions into several runs")
        raise RunError(f"--output: the results would be about {_human(total)} uncompressed ({n} regions x scores "
                       f"{shape} {np.dtype(dtype).name}), over the {_human(limit)} limit; {hint}; or pass --yes "
                       "(max_output_bytes=None) to write it anyway")


def _probe_run_open(job: RegionJob, output: str, arguments: Dict[str, Any], info: Dict[str, Any],
                    max_output_bytes: Optional[float] = MAX_OUTPUT_BYTES, **run_kw: Any):
    """Probe the first region, run the chunks, return the opened results with ``run_summary``."""
    from .results import open_results

    shape, dtype = job.probe()
    _check_output_size(job, shape, dtype, max_output_bytes, run_kw.get("log"))
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
                threads_per_worker: Optional[int] = None, center: str = "auto", on_bad_interval: str = "error",
                iupac: str = "error", max_output_bytes: Optional[float] = MAX_OUTPUT_BYTES,
                _info: Optional[Dict[str, Any]] = None, _log: Optional[Callable[[str], None]] = None):
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
        center, on_bad_interval, iupac: as for :func:`read_regions` (where ``width`` centres;
            what an interval outside its chromosome does; letters other than ACGTN). Defaults
            "auto", "error", "error".
        max_output_bytes: refuse before the run when the scores would exceed this many bytes
            uncompressed (None: no limit). Default 1e11 (100 GB).

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
    regions_ = _regions_for_run(regions, genome, fasta, width, center, on_bad_interval, iupac, _log)
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
    return _probe_run_open(job, output, arguments, info, max_output_bytes=max_output_bytes, chunk_size=chunk_size,
                           overwrite=overwrite, compression=compression, progress=progress, ray=ray,
                           workers=workers, threads_per_worker=threads_per_worker, log=_log)


def attribute_regions(model: Any, regions: Any = None, genome: Optional[str] = None,
                      output: str = "attributions.h5", *, fasta: Optional[str] = None, width: Optional[int] = None,
                      prediction_transform: Optional[Callable] = None,
                      transform_options: Optional[Dict[str, Any]] = None, method: str = "deepshap",
                      hypothetical: bool = False, correct_grad: bool = False, n_shuffles: int = 20,
                      seed: Optional[int] = None, target: Any = None, batch_size: Optional[int] = None,
                      device: Any = "cpu", chunk_size: int = 256, overwrite: bool = False,
                      compression: Optional[str] = "gzip", progress: Optional[bool] = None, ray: Any = None,
                      workers: Optional[int] = None, threads_per_worker: Optional[int] = None,
                      n_steps: Optional[int] = None, center: str = "auto", on_bad_interval: str = "error",
                      iupac: str = "error", max_output_bytes: Optional[float] = MAX_OUTPUT_BYTES,
                      _info: Optional[Dict[str, Any]] = None, _log: Optional[Callable[[str], None]] = None):
    """Attributions of many regions into a resumable HDF5 results file (``basewise attribute``).

    Arguments as for :func:`ism_regions` (regions, genome, output, fasta, width, transforms,
    chunking, ``ray=``), plus those of :func:`basewise.get_attributions`: ``method``
    ("deepshap"), ``hypothetical`` (False), ``correct_grad`` (False), ``n_shuffles`` (20),
    ``seed`` (None: drawn once per run, so every chunk and every Ray worker uses the same one;
    recorded in the file's info), ``target`` (None: an int task, or a (task, bin) tuple for the
    captum methods), ``batch_size`` (None), ``device`` ("cpu"), ``n_steps`` (None: captum's 50;
    integratedgradients only).

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
    if method not in METHODS:
        raise RunError(f"--method: expected one of {list(METHODS)}, got {method!r}")
    if n_steps is not None and method != "integratedgradients":
        raise RunError(f"--n-steps: goes with --method integratedgradients, not {method}")
    if isinstance(device, (list, tuple)):
        raise RunError(f"--device: attributions run on one device (cpu, cuda or a CUDA index), got {list(device)}; "
                       "for several GPUs use --ray with one worker per GPU")
    regions_ = _regions_for_run(regions, genome, fasta, width, center, on_bad_interval, iupac, _log)
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
                 "n_shuffles": n_shuffles, "seed": seed, "target": list(target) if isinstance(target, tuple) else target}
    if prediction_transform is not None:
        arguments["transform_object"] = type(prediction_transform).__qualname__
    kw: Dict[str, Any] = dict(device=device, method=method, correct_grad=correct_grad, hypothetical=hypothetical,
                              n_shuffles=n_shuffles, seed=seed if seed is not None else drawn)
    if target is not None:
        kw["target"] = target
    if batch_size is not None:
        kw["batch_size"] = batch_size
    if n_steps is not None:
        kw["n_steps"] = n_steps
        arguments["n_steps"] = n_steps
    job = RegionJob("attribution", regions_, model=obj, model_spec=wspec, transform=transform,
                    transform_options=transform_options if prediction_transform is None else None,
                    score_kwargs=kw, sys_path=sys_path)
    info = {"inputs": regions_.info, "model": wspec or ident.get("type"), **(_info or {})}
    if drawn is not None:
        info["deepshap_seed_drawn"] = drawn
    return _probe_run_open(job, output, arguments, info, max_output_bytes=max_output_bytes, chunk_size=chunk_size,
                           overwrite=overwrite, compression=compression, progress=progress, ray=ray,
                           workers=workers, threads_per_worker=threads_per_worker, log=_log)


def attention_regions(model: Any, regions: Any = None, genome: Optional[str] = None,
                      output: str = "attention.h5", *, fasta: Optional[str] = None, width: Optional[int] = None,
                      blocks: Optional[List[int]] = None, average_heads: bool = False, dtype: str = "float32",
                      chunk_size: int = 16, overwrite: bool = False, compression: Optional[str] = "gzip",
                      progress: Optional[bool] = None, center: str = "auto", on_bad_interval: str = "error",
                      iupac: str = "error", max_output_bytes: Optional[float] = MAX_OUTPUT_BYTES,
                      _info: Optional[Dict[str, Any]] = None, _log: Optional[Callable[[str], None]] = None):
    """Attention maps of many regions into a resumable HDF5 results file (``basewise attention``).

    Each region's maps are :func:`basewise.get_attention_scores`' (blocks, heads, queries, keys)
    probabilities, stored as ``/scores`` (N, blocks, H, L', S) (H = 1 with ``average_heads``).
    They are large (8 blocks x 8 heads x 1536^2 in float32 is 604 MB per region): the size is
    printed before the run and a run over ``max_output_bytes`` is refused; choose ``blocks``,
    ``average_heads=True`` and ``dtype="float16"`` to shrink it. Runs in this process (no Ray:
    the maps are written at the driver, so more workers would not make a run of this size
    faster than the disk).

    Args:
        model, regions, genome, output, fasta, width, chunk_size, overwrite, compression,
        progress, center, on_bad_interval, iupac, max_output_bytes: as for :func:`ism_regions`
            (default output "attention.h5", chunk_size 16).
        blocks: attention blocks to keep (indices; negative count from the end). Default None (all).
        average_heads: average over heads. Default False.
        dtype: "float16", "float32" or "float64". Default "float32".

    Returns:
        The opened results (:class:`basewise.results.Results`, kind "attention").

    Example:
        >>> # with attention_regions("mymodels:build", "peaks.bed", "hg38.fa", width=1000,
        >>> #                        blocks=[-1], average_heads=True) as r: r.scores.shape
    """
    if dtype not in ("float16", "float32", "float64"):
        raise RunError(f"--dtype: expected float16, float32 or float64, got {dtype!r}")
    if blocks is not None:
        try:
            blocks = [int(b) for b in blocks]
        except (TypeError, ValueError):
            raise RunError(f"--blocks: expected block indices, got {blocks!r}") from None
    regions_ = _regions_for_run(regions, genome, fasta, width, center, on_bad_interval, iupac, _log)
    obj, ident, wspec, sys_path = _model_for_run(model)
    from .attention import list_attention_blocks

    try:
        n_blocks = len(list_attention_blocks(obj))
    except Exception as e:  # noqa: BLE001 - no attention modules: say so, naming the model
        raise RunError(f"--model: {_first_line(e)}") from None
    if n_blocks == 0:
        raise RunError("--model: it has no attention blocks that basewise recognises (gReLU transformer blocks, "
                       "nn.MultiheadAttention, enformer-pytorch Attention, F.scaled_dot_product_attention, flash_attn)")
    bad = [b for b in (blocks or []) if not -n_blocks <= b < n_blocks]
    if bad:
        raise RunError(f"--blocks: {bad} out of range: the model has {n_blocks} attention blocks "
                       f"(0 to {n_blocks - 1}, or -1 for the last)")
    kw: Dict[str, Any] = dict(average_heads=bool(average_heads), dtype=np.dtype(dtype))
    kw["blocks"] = list(blocks) if blocks is not None else list(range(n_blocks))
    arguments = {"command": "attention", "model": model_ident_for_compare(ident), "blocks": kw["blocks"],
                 "average_heads": bool(average_heads), "dtype": dtype}
    job = RegionJob("attention", regions_, model=obj, model_spec=wspec, score_kwargs=kw, sys_path=sys_path)
    info = {"inputs": regions_.info, "model": wspec or ident.get("type"), **(_info or {})}
    return _probe_run_open(job, output, arguments, info, max_output_bytes=max_output_bytes, chunk_size=chunk_size,
                           overwrite=overwrite, compression=compression, progress=progress, log=_log)

"""Native ops for mutant batches and in-place comparisons, registered as torch custom ops.

Every op has a CPU (OpenMP) and a CUDA kernel in the native module ``basewise._C``, which does not
link libtorch: this module owns the tensors, passes their data pointers, sizes, a thread count (CPU,
``torch.get_num_threads()``) or the current CUDA stream, and registers each op with
``torch.library.custom_op`` as ``torch.ops.basewise.<name>`` together with a fake (meta)
implementation, so the ops work under ``torch.compile(fullgraph=True)``.

Fallback. On a CUDA device where the native kernels cannot run (basewise built without nvcc, no
code for that GPU's architecture, a driver too old for the CUDA runtime basewise was built with:
:func:`fallback_reason`), every op runs its plain-PyTorch implementation from
:mod:`basewise._torch_ops` instead, with the same results, and one :class:`KernelFallbackWarning`
says how to get the kernels. ``FORCE_TORCH_OPS`` (or ``BASEWISE_TORCH_OPS=1``) forces that path on
every device, which is how it is tested without a GPU.

Conventions. Base indices: 0 = A, 1 = C, 2 = G, 3 = T, 4 = N. A mutant is a row ``(seq, pos, base)``
of an int64 tensor ``mutants`` of shape ``(M, 3)``: sequence ``seq`` with ``base`` written at
position ``pos``. Reference sequences ``ref`` are ``(B, L)`` uint8 or int8 index tensors.

Validation. The public wrappers below (``mutate``, ``compare_``, ...) raise ``ValueError`` naming
the argument for a wrong dtype, shape, device, non-contiguous in-place output or out-of-range value
(a base outside 0-4, a position outside the sequence, ...), before any native code runs. Value
ranges are checked with one reduction per call; on CUDA the flags of all checked arguments are
read back to the host together, i.e. **at most one device synchronisation per call for the checks**
(none with ``check=False``, and none while ``torch.compile`` traces the call: compiled graphs skip
the value checks and keep only the shape/dtype/device checks). Only ``enumerate_mutants`` needs one
more on CUDA, to size its output. The raw ops ``torch.ops.basewise.*`` check
shapes, dtypes and devices but not values; the kernels themselves never read or write out of bounds:
rows with an out-of-range sequence, position or base are skipped (in-place ops) or zero-filled
(ops returning a new tensor).

Example:
    >>> import torch
    >>> from basewise import ops
    >>> ref = torch.tensor([[0, 1, 4]], dtype=torch.uint8)          # "ACN", (B, L) = (1, 3)
    >>> mutants = ops.enumerate_mutants(ref, 0, 3)                    # (M, 3) = (10, 3)
    >>> mutants[:3].tolist()
    [[0, 0, 1], [0, 0, 2], [0, 0, 3]]
    >>> ops.mutate(ref, mutants[:1])[0].tolist()                      # (4, L): C at position 0
    [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
"""


import contextlib
import math
import os
import threading
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch  # noqa: I001  (torch first: the extension then shares torch's OpenMP runtime)

from . import _C, _torch_ops

__all__ = [
    "build_info",
    "fallback_reason",
    "FORCE_TORCH_OPS",
    "KernelFallbackWarning",
    "enumerate_mutants",
    "mutate",
    "mutate_window",
    "compare_",
    "scatter_",
    "fill_reference_",
    "gather_windows",
    "splice_windows",
    "conv_delta_",
    "FLOAT_DTYPES",
    "COMPARE_KINDS",
]

Tensor = torch.Tensor

#: Float dtypes the native kernels read and write, with their native codes.
FLOAT_DTYPES: Dict[torch.dtype, int] = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: ``compare_`` kinds (gReLU's compare_func names, case-sensitive) and their native codes.
COMPARE_KINDS: Dict[str, int] = {"subtract": 0, "divide": 1, "log2FC": 2}

_INDEX_DTYPES = (torch.uint8, torch.int8)
_HAS_CUDA_KERNELS = bool(_C.build_info()["cuda"])
_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)

#: Run every op with its plain-PyTorch implementation (:mod:`basewise._torch_ops`) on every device
#: instead of the native kernels: same results, slower; for tests and debugging. Set it here, or
#: set the environment variable ``BASEWISE_TORCH_OPS=1`` before basewise is imported.
FORCE_TORCH_OPS: bool = os.environ.get("BASEWISE_TORCH_OPS", "0").strip() not in ("", "0")


class KernelFallbackWarning(UserWarning):
    """Issued once per process when a CUDA device has no usable native kernels and basewise's
    ops run as plain PyTorch there (same results, slower)."""


_CUDA_PROBLEMS: Dict[int, str] = {}  # CUDA index -> "" (kernels run) or why they cannot
_WARN_LOCK = threading.Lock()
_WARNED = False

_HOW_TO_GET_KERNELS = (
    "To get the kernels, install a basewise wheel built by scripts/build_wheel.sh (kernels for "
    "every GPU from Turing, sm_75, to Blackwell, sm_120), or rebuild from source where nvcc is "
    "available: BASEWISE_CUDA_ARCHS={arch} pip install --no-build-isolation --force-reinstall "
    "<basewise source>  (README, section 'GPU users')."
)


def fallback_reason(device: object) -> Optional[str]:
    """Why basewise's ops run as plain PyTorch on ``device`` instead of its native kernels.

    The native CPU kernels are always compiled in. On a CUDA device the kernels are used when
    basewise was built with them, for that GPU's architecture (or with PTX it can JIT-compile),
    and with a CUDA runtime its driver supports; this is probed once per device (no kernel is
    launched). Otherwise every op falls back to an equivalent plain-PyTorch implementation with
    the same results, and a :class:`KernelFallbackWarning` says (once) how to get the kernels.

    Args:
        device: a ``torch.device``, a device string such as ``"cuda:0"``, or a CUDA index.

    Returns:
        None when the native kernels run on ``device``, else the reason as a sentence.

    Example:
        >>> from basewise.ops import fallback_reason
        >>> fallback_reason("cpu") is None or FORCE_TORCH_OPS
        True
    """
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if FORCE_TORCH_OPS:
        return "forced by basewise.ops.FORCE_TORCH_OPS (or BASEWISE_TORCH_OPS=1)"
    if dev.type != "cuda":
        return None
    if not _HAS_CUDA_KERNELS:
        return "basewise was built without CUDA kernels (no nvcc was found when it was built)"
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    problem = _CUDA_PROBLEMS.get(idx)
    if problem is None:
        with torch.cuda.device(idx):
            problem = _C.cuda_kernel_problem(idx)
        if problem:
            problem = (f"{problem}; its CUDA kernels were compiled for {_C.build_info()['cuda_archs']}, "
                       f"this GPU is {_gpu_arch(idx)}")
        _CUDA_PROBLEMS[idx] = problem
    return problem or None


def _gpu_arch(idx: int) -> str:
    try:
        major, minor = torch.cuda.get_device_capability(idx)
        return f"sm_{major}{minor}"
    except Exception:  # pragma: no cover - no CUDA in this torch
        return "of unknown architecture"


def _warn_fallback(device: torch.device, reason: str) -> None:
    global _WARNED
    with _WARN_LOCK:
        if _WARNED:
            return
        _WARNED = True
    arch = _gpu_arch(device.index or 0).replace("sm_", "") + "-real" if device.type == "cuda" else "<arch>-real"
    warnings.warn(
        f"basewise: its native kernels cannot run on {device} ({reason}); its ops run as plain "
        f"PyTorch there instead (same results, slower). " + _HOW_TO_GET_KERNELS.format(arch=arch),
        KernelFallbackWarning, stacklevel=4)


def _use_torch(t: Tensor) -> bool:
    """Whether an op on ``t``'s device runs its plain-PyTorch implementation (warns once)."""
    if t.device.type not in ("cpu", "cuda"):
        _fail("device", f"must be cpu or cuda, got {t.device}")
    reason = fallback_reason(t.device)
    if reason is None:
        return False
    if not FORCE_TORCH_OPS:
        _warn_fallback(t.device, reason)
    return True


def build_info() -> Dict[str, object]:
    """What the native module was compiled with.

    Returns:
        dict: ``cuda`` (bool, CUDA kernels compiled in), ``cuda_archs`` (str, e.g. ``"80-real,90"``),
        ``cuda_compiler_version``, ``cuda_runtime_version`` (int, e.g. 13000; 0 without CUDA),
        ``openmp`` (bool), ``openmp_version`` (int, e.g. 201511), ``cxx_compiler``, ``build_type``,
        ``version`` (basewise's version) and ``torch`` (the running torch's version).

    Example:
        >>> from basewise.ops import build_info
        >>> sorted(build_info())[:3]
        ['build_type', 'cuda', 'cuda_archs']
    """
    info = dict(_C.build_info())
    try:
        from importlib.metadata import version

        info["version"] = version("basewise")
    except Exception:  # pragma: no cover - not installed as a distribution
        info["version"] = "0.1.0"
    info["torch"] = torch.__version__
    return info


# ---------------------------------------------------------------------------------------------
# Shared checks (metadata only: safe on fake tensors, no device synchronisation).


def _fail(arg: str, what: str) -> None:
    raise ValueError(f"{arg} {what}")


def _check_tensor(arg: str, t: object) -> Tensor:
    if not isinstance(t, torch.Tensor):
        _fail(arg, f"must be a torch.Tensor, got {type(t).__name__}")
    return t  # type: ignore[return-value]


def _check_device(arg: str, t: Tensor, device: torch.device) -> None:
    if t.device != device:
        _fail(arg, f"must be on the same device as the other inputs ({device}), got {t.device}")


def _check_supported_device(arg: str, t: Tensor) -> None:
    if t.device.type not in ("cpu", "cuda", "meta"):
        _fail(arg, f"must be a CPU or CUDA tensor, got device {t.device}")


def _check_ref(ref: object, arg: str = "ref") -> Tensor:
    ref = _check_tensor(arg, ref)
    if ref.dtype not in _INDEX_DTYPES:
        _fail(arg, f"must be a uint8 or int8 base-index tensor (values 0-4), got dtype {ref.dtype}")
    if ref.dim() != 2:
        _fail(arg, f"must have shape (B, L), got {tuple(ref.shape)}")
    _check_supported_device(arg, ref)
    return ref


def _check_index(arg: str, t: object, shape: Tuple[Optional[int], ...], device: torch.device,
                 exact_int64: bool) -> Tensor:
    """An integer index tensor of `shape` (None = any size) on `device`."""
    t = _check_tensor(arg, t)
    if exact_int64:
        if t.dtype != torch.int64:
            _fail(arg, f"must be an int64 tensor, got dtype {t.dtype}")
    elif t.dtype not in _INT_DTYPES:
        _fail(arg, f"must be an integer tensor, got dtype {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        want = "(" + ", ".join("M" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        _fail(arg, f"must have shape {want}, got {tuple(t.shape)}")
    _check_device(arg, t, device)
    return t


def _check_float(arg: str, t: object, allowed: Sequence[torch.dtype]) -> Tensor:
    t = _check_tensor(arg, t)
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        _fail(arg, f"must have dtype {names}, got {t.dtype}")
    return t


def _check_out_dtype(dtype: object) -> int:
    if dtype not in FLOAT_DTYPES:
        _fail("dtype", f"must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
    return FLOAT_DTYPES[dtype]  # type: ignore[index]


def _check_int(arg: str, v: object, minimum: Optional[int] = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            import numpy as np

            if isinstance(v, np.integer):
                v = int(v)
            else:
                raise TypeError
        except TypeError:
            _fail(arg, f"must be an int, got {type(v).__name__}")
    if minimum is not None and v < minimum:  # type: ignore[operator]
        _fail(arg, f"must be >= {minimum}, got {v}")
    return int(v)  # type: ignore[arg-type]


def _check_contiguous_out(arg: str, t: Tensor) -> None:
    if not t.is_contiguous():
        _fail(arg, "must be contiguous (it is written in place)")


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


# ---------------------------------------------------------------------------------------------
# Value-range checks (public wrappers only; at most one device synchronisation per call).


def _skip_value_checks() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False


def _raise_first(checks: List[Tuple[str, str, Tensor]]) -> None:
    """Raise ValueError for the first (arg, message, flag) whose 0-d bool flag is True."""
    if not checks:
        return
    flags = torch.stack([c[2].reshape(()) for c in checks]).tolist()  # one sync on CUDA
    for (arg, msg, _), bad in zip(checks, flags):
        if bad:
            _fail(arg, msg)


def _any(mask: Tensor) -> Tensor:
    return mask.any() if mask.numel() else torch.zeros((), dtype=torch.bool, device=mask.device)


def _ref_flag(ref: Tensor, arg: str = "ref") -> Tuple[str, str, Tensor]:
    return (arg, "holds a value outside 0-4 (0-3 = A, C, G, T; 4 = N)",
            _any(ref.view(torch.uint8) > 4))


def _mutant_flags(mutants: Tensor, B: int, pos_lo: int, pos_hi: int,
                  what: str = "the sequence") -> List[Tuple[str, str, Tensor]]:
    seq, pos, base = mutants[:, 0], mutants[:, 1], mutants[:, 2]
    return [
        ("mutants", f"holds a sequence index outside [0, {B}) (column 0)", _any((seq < 0) | (seq >= B))),
        ("mutants", f"holds a position outside {what} [{pos_lo}, {pos_hi}) (column 1)",
         _any((pos < pos_lo) | (pos >= pos_hi))),
        ("mutants", "holds a base outside 0-3 (column 2; 0-3 = A, C, G, T)", _any((base < 0) | (base > 3))),
    ]


# ---------------------------------------------------------------------------------------------
# Native launch helpers.


@contextlib.contextmanager
def _native(t: Tensor) -> Iterator[Tuple[int, int, int]]:
    """Yield (device index or -1 for CPU, stream handle, CPU thread count) for a native call."""
    if t.device.type == "cuda":
        with torch.cuda.device(t.device):
            yield t.device.index, torch.cuda.current_stream(t.device).cuda_stream, 1
    elif t.device.type == "cpu":
        yield -1, 0, torch.get_num_threads()
    else:
        _fail("device", f"must be cpu or cuda, got {t.device}")


#: CPU outputs at least this large are allocated with a transparent-huge-page hint.
_HUGEPAGE_MIN_BYTES = 8 << 20


def _new_output(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """torch.empty, plus on CPU for large outputs a hint to back them with transparent huge pages:
    a fresh 48 MB one-hot batch otherwise spends most of its time in 4 KiB page faults. The hint
    (madvise(MADV_HUGEPAGE) on the buffer's own pages, Linux only) changes nothing else."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if out.device.type == "cpu":
        nbytes = out.numel() * out.element_size()
        if nbytes >= _HUGEPAGE_MIN_BYTES:
            _C.advise_hugepages(out.data_ptr(), nbytes)
    return out


def _u8(ref: Tensor) -> Tensor:
    return ref.contiguous().view(torch.uint8)


# ---------------------------------------------------------------------------------------------
# enumerate


def _meta_enumerate(ref: Tensor, start: int, end: int) -> None:
    _check_ref(ref)
    L = ref.shape[1]
    if not (0 <= start <= L):
        _fail("start", f"must be in [0, L] = [0, {L}], got {start}")
    if not (start <= end <= L):
        _fail("end", f"must be in [start, L] = [{start}, {L}], got {end}")


@torch.library.custom_op("basewise::enumerate", mutates_args=())
def _enumerate_op(ref: Tensor, start: int, end: int) -> Tensor:
    _meta_enumerate(ref, start, end)
    r = _u8(ref)
    B, L = r.shape
    if _use_torch(r):
        return _torch_ops.enumerate_rows(r, start, end)
    with _native(r) as (dev, stream, nt):
        if dev < 0:
            M = _C.enumerate_count(r.data_ptr(), B, L, start, end)
            out = torch.empty((M, 3), dtype=torch.int64)
            if M:
                _C.enumerate(dev, stream, r.data_ptr(), B, L, start, end, 0, out.data_ptr(), nt)
        else:
            # rows per (b, p): 3, or 4 at N; exclusive prefix sums give each one's first row
            n_rows = (r[:, start:end] > 3).to(torch.int64).add_(3).reshape(-1)  # (B * P,)
            ends = torch.cumsum(n_rows, 0)
            M = int(ends[-1]) if ends.numel() else 0  # the one device synchronisation
            first = ends - n_rows
            out = torch.empty((M, 3), dtype=torch.int64, device=r.device)
            if M:
                _C.enumerate(dev, stream, r.data_ptr(), B, L, start, end, first.data_ptr(),
                             out.data_ptr(), nt)
    return out


@_enumerate_op.register_fake
def _(ref: Tensor, start: int, end: int) -> Tensor:
    _meta_enumerate(ref, start, end)
    M = torch.library.get_ctx().new_dynamic_size()
    return ref.new_empty((M, 3), dtype=torch.int64)


def enumerate_mutants(ref: Tensor, start: int, end: int, *, check: bool = True) -> Tensor:
    """All single-base substitutions of positions ``[start, end)``, in gReLU's order.

    Rows are ordered by sequence, then position, then base (A < C < G < T). Each position's
    reference base is skipped (3 rows per position); at an N position all 4 bases are listed.

    Args:
        ref: (B, L) uint8 or int8 base indices (0-3 = A, C, G, T; 4 = N), on CPU or CUDA.
        start: first position, 0 <= start <= L.
        end: one past the last position, start <= end <= L.
        check: keyword-only, default True: check that ``ref`` holds only 0-4 (one reduction and,
            on CUDA, one synchronisation; the op itself needs a second one there to size its
            output, as the number of rows depends on the N count).

    Returns:
        (M, 3) int64 rows (seq, pos, base) on ``ref``'s device, M = 3 * B * (end - start) plus the
        number of N bases in ``ref[:, start:end]``.

    Raises:
        ValueError: naming ``ref``, ``start`` or ``end``.

    Example:
        >>> import torch
        >>> from basewise.ops import enumerate_mutants
        >>> enumerate_mutants(torch.tensor([[2, 4]], dtype=torch.uint8), 0, 2).tolist()
        [[0, 0, 0], [0, 0, 1], [0, 0, 3], [0, 1, 0], [0, 1, 1], [0, 1, 2], [0, 1, 3]]
    """
    _check_ref(ref)
    start = _check_int("start", start)
    end = _check_int("end", end)
    _meta_enumerate(ref, start, end)
    if check and not _skip_value_checks():
        _raise_first([_ref_flag(ref)])
    return torch.ops.basewise.enumerate(ref, start, end)


# ---------------------------------------------------------------------------------------------
# mutate / mutate_window


def _meta_mutate(ref: Tensor, mutants: Tensor, dtype: torch.dtype, offset: Optional[Tensor] = None,
                 width: Optional[int] = None) -> int:
    _check_ref(ref)
    M = _check_index("mutants", mutants, (None, 3), ref.device, exact_int64=True).shape[0]
    if offset is not None:
        _check_index("offset", offset, (M,), ref.device, exact_int64=True)
        if width is None or width < 0:
            _fail("width", f"must be an int >= 0, got {width}")
    return _check_out_dtype(dtype)


@torch.library.custom_op("basewise::mutate", mutates_args=())
def _mutate_op(ref: Tensor, mutants: Tensor, dtype: torch.dtype) -> Tensor:
    code = _meta_mutate(ref, mutants, dtype)
    r, mu = _u8(ref), mutants.contiguous()
    B, L = r.shape
    M = mu.shape[0]
    if _use_torch(r):
        return _torch_ops.mutate(r, mu, None, L, dtype)
    out = _new_output((M, 4, L), dtype, r.device)
    with _native(r) as (dev, stream, nt):
        _C.mutate(dev, stream, r.data_ptr(), B, L, mu.data_ptr(), M, 0, L, out.data_ptr(), code, nt)
    return out


@_mutate_op.register_fake
def _(ref: Tensor, mutants: Tensor, dtype: torch.dtype) -> Tensor:
    _meta_mutate(ref, mutants, dtype)
    return ref.new_empty((mutants.shape[0], 4, ref.shape[1]), dtype=dtype)


@torch.library.custom_op("basewise::mutate_window", mutates_args=())
def _mutate_window_op(ref: Tensor, mutants: Tensor, offset: Tensor, width: int,
                      dtype: torch.dtype) -> Tensor:
    code = _meta_mutate(ref, mutants, dtype, offset, width)
    r, mu, off = _u8(ref), mutants.contiguous(), offset.contiguous()
    B, L = r.shape
    M = mu.shape[0]
    if _use_torch(r):
        return _torch_ops.mutate(r, mu, off, width, dtype)
    out = _new_output((M, 4, width), dtype, r.device)
    if M and width:
        with _native(r) as (dev, stream, nt):
            _C.mutate(dev, stream, r.data_ptr(), B, L, mu.data_ptr(), M, off.data_ptr(), width,
                      out.data_ptr(), code, nt)
    return out


@_mutate_window_op.register_fake
def _(ref: Tensor, mutants: Tensor, offset: Tensor, width: int, dtype: torch.dtype) -> Tensor:
    _meta_mutate(ref, mutants, dtype, offset, width)
    return ref.new_empty((mutants.shape[0], 4, width), dtype=dtype)


def _meta_mutate_into(out: Tensor, ref: Tensor, mutants: Tensor, offset: Optional[Tensor]) -> int:
    out = _check_float("out", out, tuple(FLOAT_DTYPES))
    code = _meta_mutate(ref, mutants, out.dtype)
    M, L = mutants.shape[0], ref.shape[1]
    if offset is not None:
        _check_index("offset", offset, (M,), ref.device, exact_int64=True)
    if out.dim() != 3 or out.shape[0] != M or out.shape[1] != 4 or (offset is None and out.shape[2] != L):
        want = f"({M}, 4, {L})" if offset is None else f"({M}, 4, width)"
        _fail("out", f"must have shape {want}, got {tuple(out.shape)}")
    _check_device("out", out, ref.device)
    _check_contiguous_out("out", out)
    return code


@torch.library.custom_op("basewise::mutate_into", mutates_args=("out",))
def _mutate_into_op(out: Tensor, ref: Tensor, mutants: Tensor, offset: Optional[Tensor]) -> None:
    code = _meta_mutate_into(out, ref, mutants, offset)
    r, mu = _u8(ref), mutants.contiguous()
    off = offset.contiguous() if offset is not None else None
    B, L = r.shape
    M, W = out.shape[0], out.shape[2]
    if M and W and _use_torch(r):
        out.copy_(_torch_ops.mutate(r, mu, off, W, out.dtype))
    elif M and W:
        with _native(r) as (dev, stream, nt):
            _C.mutate(dev, stream, r.data_ptr(), B, L, mu.data_ptr(), M,
                      off.data_ptr() if off is not None else 0, W, out.data_ptr(), code, nt)


@_mutate_into_op.register_fake
def _(out: Tensor, ref: Tensor, mutants: Tensor, offset: Optional[Tensor]) -> None:
    _meta_mutate_into(out, ref, mutants, offset)


def _check_out_like(out: object, dtype: torch.dtype) -> None:
    out = _check_tensor("out", out)
    if out.dtype != dtype:
        _fail("out", f"must have the requested dtype {dtype}, got {out.dtype}")


def _prep_mutants(ref: Tensor, mutants: object, arg: str = "mutants") -> Tensor:
    m = _check_index(arg, mutants, (None, 3), ref.device, exact_int64=False)
    return m.to(torch.int64).contiguous()


def mutate(ref: Tensor, mutants: Tensor, dtype: torch.dtype = torch.float32, *,
           out: Optional[Tensor] = None, check: bool = True) -> Tensor:
    """One-hot batch of single-base mutants.

    ``out[m]`` is the one-hot encoding of ``ref[seq]`` with ``base`` written at ``pos`` (for the
    row ``mutants[m] = (seq, pos, base)``); an N elsewhere in the reference is an all-zero column.

    Args:
        ref: (B, L) uint8 or int8 base indices (0-3 = A, C, G, T; 4 = N), CPU or CUDA.
        mutants: (M, 3) integer rows (seq, pos, base), base 0-3, on ``ref``'s device (converted to
            int64).
        dtype: output dtype, default torch.float32; also torch.float16 or torch.bfloat16.
        out: keyword-only, default None: a contiguous (M, 4, L) tensor of ``dtype`` on ``ref``'s
            device to write into (and return) instead of allocating one. Reusing a buffer avoids
            the page faults of a fresh large allocation, which on CPU cost more than the writes.
        check: keyword-only, default True: check value ranges of ``ref`` and ``mutants`` (one
            synchronisation on CUDA).

    Returns:
        (M, 4, L) tensor of ``dtype`` on ``ref``'s device (``out`` when given).

    Raises:
        ValueError: naming ``ref``, ``mutants`` or ``dtype``.

    Example:
        >>> import torch
        >>> from basewise.ops import mutate
        >>> ref = torch.tensor([[0, 0]], dtype=torch.uint8)              # "AA"
        >>> mutate(ref, torch.tensor([[0, 1, 3]]))[0].tolist()           # "AT"
        [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    _check_ref(ref)
    mutants = _prep_mutants(ref, mutants)
    _meta_mutate(ref, mutants, dtype)
    if out is not None:
        _check_out_like(out, dtype)
        _meta_mutate_into(out, ref, mutants, None)
    if check and not _skip_value_checks():
        B, L = ref.shape
        _raise_first([_ref_flag(ref)] + _mutant_flags(mutants, B, 0, L))
    if out is None:
        return torch.ops.basewise.mutate(ref, mutants, dtype)
    torch.ops.basewise.mutate_into(out, ref, mutants, None)
    return out


def mutate_window(ref: Tensor, mutants: Tensor, offset: Tensor, width: int,
                  dtype: torch.dtype = torch.float32, *, out: Optional[Tensor] = None,
                  check: bool = True) -> Tensor:
    """A window of the one-hot mutant batch: ``out[m, :, j]`` encodes position ``offset[m] + j``.

    Columns whose position ``offset[m] + j`` lies outside ``[0, L)`` are zero, so windows may
    overlap either end of the sequence.

    Args:
        ref: (B, L) uint8 or int8 base indices (0-4), CPU or CUDA.
        mutants: (M, 3) integer rows (seq, pos, base), base 0-3, on ``ref``'s device.
        offset: (M,) integer sequence position of each window's first column; may be negative or
            run past the end.
        width: window width W >= 0.
        dtype: output dtype, default torch.float32; also torch.float16 or torch.bfloat16.
        out: keyword-only, default None: a contiguous (M, 4, width) tensor of ``dtype`` on
            ``ref``'s device to write into (and return) instead of allocating one.
        check: keyword-only, default True: check value ranges (one synchronisation on CUDA).

    Returns:
        (M, 4, width) tensor of ``dtype`` on ``ref``'s device (``out`` when given).

    Raises:
        ValueError: naming ``ref``, ``mutants``, ``offset``, ``width`` or ``dtype``.

    Example:
        >>> import torch
        >>> from basewise.ops import mutate_window
        >>> ref = torch.tensor([[0, 1, 2]], dtype=torch.uint8)           # "ACG"
        >>> w = mutate_window(ref, torch.tensor([[0, 0, 3]]), torch.tensor([-1]), 3)
        >>> w[0].tolist()                                                  # positions -1, 0, 1
        [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    _check_ref(ref)
    mutants = _prep_mutants(ref, mutants)
    M = mutants.shape[0]
    offset = _check_index("offset", offset, (M,), ref.device, exact_int64=False).to(torch.int64)
    width = _check_int("width", width, minimum=0)
    _meta_mutate(ref, mutants, dtype, offset, width)
    if out is not None:
        _check_out_like(out, dtype)
        if out.dim() != 3 or out.shape[2] != width:
            _fail("out", f"must have shape ({M}, 4, {width}), got {tuple(out.shape)}")
        _meta_mutate_into(out, ref, mutants, offset)
    if check and not _skip_value_checks():
        B, L = ref.shape
        _raise_first([_ref_flag(ref)] + _mutant_flags(mutants, B, 0, L))
    if out is None:
        return torch.ops.basewise.mutate_window(ref, mutants, offset.contiguous(), width, dtype)
    torch.ops.basewise.mutate_into(out, ref, mutants, offset.contiguous())
    return out


# ---------------------------------------------------------------------------------------------
# compare_


def _meta_compare(preds: Tensor, ref: Tensor, kind: str) -> Tuple[int, int, int, int]:
    preds = _check_float("preds", preds, (torch.float32,))
    ref = _check_float("ref", ref, (torch.float32,))
    _check_supported_device("preds", preds)
    if kind not in COMPARE_KINDS:
        _fail("kind", f"must be one of {sorted(COMPARE_KINDS)} (case-sensitive), got {kind!r}")
    if preds.dim() < 3 or preds.shape[2] != 4:
        _fail("preds", f"must have shape (B, P, 4, *S), got {tuple(preds.shape)}")
    B, P = preds.shape[0], preds.shape[1]
    S = tuple(preds.shape[3:])
    if tuple(ref.shape) != (B,) + S:
        _fail("ref", f"must have shape (B, *S) = {(B,) + S} to match preds, got {tuple(ref.shape)}")
    _check_device("ref", ref, preds.device)
    _check_contiguous_out("preds", preds)
    return B, P * 4, _numel(S), COMPARE_KINDS[kind]


@torch.library.custom_op("basewise::compare_", mutates_args=("preds",))
def _compare_op(preds: Tensor, ref: Tensor, kind: str) -> None:
    B, Q, S, code = _meta_compare(preds, ref, kind)
    r = ref.contiguous()
    if _use_torch(preds):
        _torch_ops.compare_(preds, r, kind)
        return
    with _native(preds) as (dev, stream, nt):
        _C.compare(dev, stream, preds.data_ptr(), r.data_ptr(), B, Q, S, code, nt)


@_compare_op.register_fake
def _(preds: Tensor, ref: Tensor, kind: str) -> None:
    _meta_compare(preds, ref, kind)


def compare_(preds: Tensor, ref: Tensor, kind: str) -> None:
    """Compare mutant predictions with the reference prediction, in place, as gReLU does.

    ``"subtract"``: preds - ref; ``"divide"``: preds / ref; ``"log2FC"``: log2(preds / ref), all in
    float32 with no epsilon, so x / 0 gives +-inf (or nan for 0 / 0) and the log2 of a negative
    ratio gives nan, exactly where numpy does (-0.0 is kept). ``ref`` broadcasts over P and the 4
    bases.

    Args:
        preds: (B, P, 4, *S) float32, contiguous, CPU or CUDA; overwritten.
        ref: (B, *S) float32 on ``preds``' device.
        kind: ``"subtract"``, ``"divide"`` or ``"log2FC"`` (case-sensitive, gReLU's names).

    Raises:
        ValueError: naming ``preds``, ``ref`` or ``kind``.

    Example:
        >>> import torch
        >>> from basewise.ops import compare_
        >>> preds = torch.tensor([[[[2.0], [4.0], [1.0], [0.0]]]])      # (1, 1, 4, 1)
        >>> compare_(preds, torch.tensor([[2.0]]), "log2FC")
        >>> preds.flatten().tolist()
        [0.0, 1.0, -1.0, -inf]
    """
    _meta_compare(preds, ref, kind)
    torch.ops.basewise.compare_(preds, ref, kind)


# ---------------------------------------------------------------------------------------------
# scatter_ / fill_reference_


def _meta_out(out: Tensor) -> Tuple[int, int, Tuple[int, ...]]:
    out = _check_float("out", out, (torch.float32,))
    _check_supported_device("out", out)
    if out.dim() < 3 or out.shape[2] != 4:
        _fail("out", f"must have shape (B, P, 4, *S), got {tuple(out.shape)}")
    _check_contiguous_out("out", out)
    return out.shape[0], out.shape[1], tuple(out.shape[3:])


def _meta_scatter(out: Tensor, values: Tensor, mutants: Tensor) -> int:
    B, P, S = _meta_out(out)
    values = _check_float("values", values, tuple(FLOAT_DTYPES))
    M = _check_index("mutants", mutants, (None, 3), out.device, exact_int64=True).shape[0]
    if tuple(values.shape) != (M,) + S:
        _fail("values", f"must have shape (M, *S) = {(M,) + S}, got {tuple(values.shape)}")
    _check_device("values", values, out.device)
    return FLOAT_DTYPES[values.dtype]


@torch.library.custom_op("basewise::scatter_", mutates_args=("out",))
def _scatter_op(out: Tensor, values: Tensor, mutants: Tensor, start: int) -> None:
    code = _meta_scatter(out, values, mutants)
    B, P = out.shape[0], out.shape[1]
    S = _numel(out.shape[3:])
    v, mu = values.contiguous(), mutants.contiguous()
    if _use_torch(out):
        _torch_ops.scatter_(out, v, mu, start)
        return
    with _native(out) as (dev, stream, nt):
        _C.scatter(dev, stream, out.data_ptr(), v.data_ptr(), mu.data_ptr(), B, P, S, mu.shape[0],
                   start, code, nt)


@_scatter_op.register_fake
def _(out: Tensor, values: Tensor, mutants: Tensor, start: int) -> None:
    _meta_scatter(out, values, mutants)


def _as_native_float(arg: str, t: object) -> Tensor:
    t = _check_tensor(arg, t)
    if not t.is_floating_point():
        _fail(arg, f"must be a floating-point tensor, got dtype {t.dtype}")
    return t if t.dtype in FLOAT_DTYPES else t.to(torch.float32)


def scatter_(out: Tensor, values: Tensor, mutants: Tensor, start: int, *, check: bool = True) -> None:
    """Write mutant predictions into their ISM output slots: ``out[seq, pos - start, base] = values[m]``.

    Args:
        out: (B, P, 4, *S) float32, contiguous, CPU or CUDA; written in place.
        values: (M, *S) float32, float16 or bfloat16 (other float dtypes are converted first);
            converted to float32 on write.
        mutants: (M, 3) integer rows (seq, pos, base) on ``out``'s device, with
            0 <= seq < B, start <= pos < start + P and 0 <= base <= 3.
        start: the input position of ``out``'s first position slot.
        check: keyword-only, default True: check the ``mutants`` value ranges (one
            synchronisation on CUDA).

    Raises:
        ValueError: naming ``out``, ``values``, ``mutants`` or ``start``.

    Example:
        >>> import torch
        >>> from basewise.ops import scatter_
        >>> out = torch.zeros(1, 2, 4)                                    # (B, P, 4), S = ()
        >>> scatter_(out, torch.tensor([7.0]), torch.tensor([[0, 11, 2]]), start=10)
        >>> out[0, 1].tolist()
        [0.0, 0.0, 7.0, 0.0]
    """
    B, P, _ = _meta_out(out)
    mutants = _check_index("mutants", mutants, (None, 3), out.device, exact_int64=False).to(torch.int64)
    values = _as_native_float("values", values)
    start = _check_int("start", start)
    _meta_scatter(out, values, mutants)
    if check and not _skip_value_checks():
        _raise_first(_mutant_flags(mutants, B, start, start + P, what="out's positions"))
    torch.ops.basewise.scatter_(out, values, mutants.contiguous(), start)


def _meta_fill(out: Tensor, ref_preds: Tensor, ref: Tensor, start: int) -> int:
    B, P, S = _meta_out(out)
    ref_preds = _check_float("ref_preds", ref_preds, tuple(FLOAT_DTYPES))
    if tuple(ref_preds.shape) != (B,) + S:
        _fail("ref_preds", f"must have shape (B, *S) = {(B,) + S}, got {tuple(ref_preds.shape)}")
    _check_device("ref_preds", ref_preds, out.device)
    _check_ref(ref)
    if ref.shape[0] != B:
        _fail("ref", f"must have B = {B} rows to match out, got shape {tuple(ref.shape)}")
    _check_device("ref", ref, out.device)
    L = ref.shape[1]
    if not (0 <= start and start + P <= L):
        _fail("start", f"must satisfy 0 <= start and start + P <= L (P = {P}, L = {L}), got {start}")
    return FLOAT_DTYPES[ref_preds.dtype]


@torch.library.custom_op("basewise::fill_reference_", mutates_args=("out",))
def _fill_reference_op(out: Tensor, ref_preds: Tensor, ref: Tensor, start: int) -> None:
    code = _meta_fill(out, ref_preds, ref, start)
    B, P = out.shape[0], out.shape[1]
    S = _numel(out.shape[3:])
    rp, r = ref_preds.contiguous(), _u8(ref)
    if _use_torch(out):
        _torch_ops.fill_reference_(out, rp, r, start)
        return
    with _native(out) as (dev, stream, nt):
        _C.fill_reference(dev, stream, out.data_ptr(), rp.data_ptr(), r.data_ptr(), B, P, S,
                          r.shape[1], start, code, nt)


@_fill_reference_op.register_fake
def _(out: Tensor, ref_preds: Tensor, ref: Tensor, start: int) -> None:
    _meta_fill(out, ref_preds, ref, start)


def fill_reference_(out: Tensor, ref_preds: Tensor, ref: Tensor, start: int, *,
                    check: bool = True) -> None:
    """Write each sequence's reference prediction into its reference-base slots, in place.

    For every b and p with ``ref[b, start + p] != 4``: ``out[b, p, ref[b, start + p]] = ref_preds[b]``
    (N positions have no reference-base slot and are left alone).

    Args:
        out: (B, P, 4, *S) float32, contiguous, CPU or CUDA; written in place.
        ref_preds: (B, *S) float tensor on ``out``'s device (converted to float32 on write).
        ref: (B, L) uint8 or int8 base indices (0-4) on ``out``'s device.
        start: input position of ``out``'s first slot; 0 <= start and start + P <= L.
        check: keyword-only, default True: check that ``ref`` holds only 0-4 (one
            synchronisation on CUDA).

    Raises:
        ValueError: naming ``out``, ``ref_preds``, ``ref`` or ``start``.

    Example:
        >>> import torch
        >>> from basewise.ops import fill_reference_
        >>> out = torch.zeros(1, 2, 4)
        >>> fill_reference_(out, torch.tensor([5.0]), torch.tensor([[3, 4]], dtype=torch.uint8), 0)
        >>> out[0].tolist()
        [[0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]]
    """
    _meta_out(out)
    ref_preds = _as_native_float("ref_preds", ref_preds)
    start = _check_int("start", start)
    _meta_fill(out, ref_preds, ref, start)
    if check and not _skip_value_checks():
        _raise_first([_ref_flag(ref)])
    torch.ops.basewise.fill_reference_(out, ref_preds, ref, start)


# ---------------------------------------------------------------------------------------------
# Window ops for the incremental ISM engine


def _meta_windows_x(x: Tensor, seq_idx: Tensor, offset: Tensor) -> int:
    x = _check_float("x", x, tuple(FLOAT_DTYPES))
    _check_supported_device("x", x)
    if x.dim() != 3:
        _fail("x", f"must have shape (B, C, Lx), got {tuple(x.shape)}")
    M = _check_index("seq_idx", seq_idx, (None,), x.device, exact_int64=True).shape[0]
    _check_index("offset", offset, (M,), x.device, exact_int64=True)
    return M


def _prep_windows(x: Tensor, seq_idx: Tensor, offset: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Public-wrapper preparation shared by the window ops: x checked, indices as int64 on x's device."""
    x = _check_float("x", x, tuple(FLOAT_DTYPES))
    _check_supported_device("x", x)
    seq_idx = _prep_idx("seq_idx", seq_idx, (None,), x.device)
    offset = _prep_idx("offset", offset, (seq_idx.shape[0],), x.device)
    return x, seq_idx, offset


def _check_seq_idx_range(x: Tensor, seq_idx: Tensor, check: bool) -> None:
    """Window ops: every seq_idx in [0, B) (skipped with check=False; one sync on CUDA)."""
    if check and not _skip_value_checks():
        B = x.shape[0]
        _raise_first([("seq_idx", f"holds an index outside [0, {B})",
                       _any((seq_idx < 0) | (seq_idx >= B)))])


@torch.library.custom_op("basewise::gather_windows", mutates_args=())
def _gather_windows_op(x: Tensor, seq_idx: Tensor, offset: Tensor, width: int) -> Tensor:
    M = _meta_windows_x(x, seq_idx, offset)
    if width < 0:
        _fail("width", f"must be >= 0, got {width}")
    xc, si, off = x.contiguous(), seq_idx.contiguous(), offset.contiguous()
    B, C, Lx = xc.shape
    if _use_torch(xc):
        return _torch_ops.gather_windows(xc, si, off, width)
    out = _new_output((M, C, width), x.dtype, x.device)
    if out.numel():
        with _native(xc) as (dev, stream, nt):
            _C.gather_windows(dev, stream, xc.data_ptr(), si.data_ptr(), off.data_ptr(),
                              out.data_ptr(), B, C, Lx, M, width, xc.element_size(), nt)
    return out


@_gather_windows_op.register_fake
def _(x: Tensor, seq_idx: Tensor, offset: Tensor, width: int) -> Tensor:
    M = _meta_windows_x(x, seq_idx, offset)
    return x.new_empty((M, x.shape[1], width))


def _prep_idx(arg: str, t: object, shape: Tuple[Optional[int], ...], device: torch.device) -> Tensor:
    return _check_index(arg, t, shape, device, exact_int64=False).to(torch.int64).contiguous()


def gather_windows(x: Tensor, seq_idx: Tensor, offset: Tensor, width: int, *,
                   check: bool = True) -> Tensor:
    """Windows of activations: ``out[m, c, j] = x[seq_idx[m], c, offset[m] + j]``, zero outside.

    Args:
        x: (B, C, Lx) float32, float16 or bfloat16 activations, CPU or CUDA.
        seq_idx: (M,) integer row of ``x`` for each window, 0 <= seq_idx < B.
        offset: (M,) integer first column of each window; may be negative or run past Lx (those
            columns are zero).
        width: window width W >= 0.
        check: keyword-only, default True: check ``seq_idx`` ranges (one sync on CUDA).

    Returns:
        (M, C, width) tensor of ``x``'s dtype and device.

    Raises:
        ValueError: naming ``x``, ``seq_idx``, ``offset`` or ``width``.

    Example:
        >>> import torch
        >>> from basewise.ops import gather_windows
        >>> x = torch.arange(6.0).reshape(1, 2, 3)                     # (B, C, Lx)
        >>> gather_windows(x, torch.tensor([0]), torch.tensor([2]), 2)[0].tolist()
        [[2.0, 0.0], [5.0, 0.0]]
    """
    x, seq_idx, offset = _prep_windows(x, seq_idx, offset)
    width = _check_int("width", width, minimum=0)
    _meta_windows_x(x, seq_idx, offset)
    _check_seq_idx_range(x, seq_idx, check)
    return torch.ops.basewise.gather_windows(x, seq_idx, offset, width)


def _meta_splice(x: Tensor, seq_idx: Tensor, offset: Tensor, windows: Tensor) -> int:
    M = _meta_windows_x(x, seq_idx, offset)
    windows = _check_tensor("windows", windows)
    if windows.dtype != x.dtype:
        _fail("windows", f"must have x's dtype {x.dtype}, got {windows.dtype}")
    if windows.dim() != 3 or windows.shape[0] != M or windows.shape[1] != x.shape[1]:
        _fail("windows", f"must have shape (M, C, W) = ({M}, {x.shape[1]}, W), got {tuple(windows.shape)}")
    _check_device("windows", windows, x.device)
    return M


@torch.library.custom_op("basewise::splice_windows", mutates_args=())
def _splice_windows_op(x: Tensor, seq_idx: Tensor, offset: Tensor, windows: Tensor) -> Tensor:
    M = _meta_splice(x, seq_idx, offset, windows)
    xc, si, off, wc = x.contiguous(), seq_idx.contiguous(), offset.contiguous(), windows.contiguous()
    B, C, Lx = xc.shape
    if _use_torch(xc):
        return _torch_ops.splice_windows(xc, si, off, wc)
    out = _new_output((M, C, Lx), x.dtype, x.device)
    if out.numel():
        with _native(xc) as (dev, stream, nt):
            _C.splice_windows(dev, stream, xc.data_ptr(), si.data_ptr(), off.data_ptr(),
                              wc.data_ptr(), out.data_ptr(), B, C, Lx, M, wc.shape[2],
                              xc.element_size(), nt)
    return out


@_splice_windows_op.register_fake
def _(x: Tensor, seq_idx: Tensor, offset: Tensor, windows: Tensor) -> Tensor:
    M = _meta_splice(x, seq_idx, offset, windows)
    return x.new_empty((M, x.shape[1], x.shape[2]))


def splice_windows(x: Tensor, seq_idx: Tensor, offset: Tensor, windows: Tensor, *,
                   check: bool = True) -> Tensor:
    """Activations with a window spliced in: ``out[m] = x[seq_idx[m]]`` with columns
    ``offset[m] + j`` (0 <= j < W, inside [0, Lx)) replaced by ``windows[m, :, j]``.

    Args:
        x: (B, C, Lx) float32, float16 or bfloat16 activations, CPU or CUDA.
        seq_idx: (M,) integer row of ``x`` for each output, 0 <= seq_idx < B.
        offset: (M,) integer column where each window starts; may be negative or run past Lx
            (the parts outside are dropped).
        windows: (M, C, W) of ``x``'s dtype and device.
        check: keyword-only, default True: check ``seq_idx`` ranges (one sync on CUDA).

    Returns:
        (M, C, Lx) tensor of ``x``'s dtype and device.

    Raises:
        ValueError: naming ``x``, ``seq_idx``, ``offset`` or ``windows``.

    Example:
        >>> import torch
        >>> from basewise.ops import splice_windows
        >>> x = torch.zeros(1, 1, 4)
        >>> splice_windows(x, torch.tensor([0]), torch.tensor([-1]), torch.ones(1, 1, 2))[0].tolist()
        [[1.0, 0.0, 0.0, 0.0]]
    """
    x, seq_idx, offset = _prep_windows(x, seq_idx, offset)
    _meta_splice(x, seq_idx, offset, windows)
    _check_seq_idx_range(x, seq_idx, check)
    return torch.ops.basewise.splice_windows(x, seq_idx, offset, windows)


def _meta_conv_delta(pre: Tensor, weight: Tensor, mutants: Tensor, ref: Tensor,
                     out_offset: Tensor, stride: int, padding: int, dilation: int) -> int:
    pre = _check_float("pre", pre, tuple(FLOAT_DTYPES))
    _check_supported_device("pre", pre)
    if pre.dim() != 3:
        _fail("pre", f"must have shape (M, Cout, W), got {tuple(pre.shape)}")
    _check_contiguous_out("pre", pre)
    M, Cout = pre.shape[0], pre.shape[1]
    weight = _check_float("weight", weight, (torch.float32,))
    if weight.dim() != 3 or weight.shape[0] != Cout or weight.shape[1] != 4:
        _fail("weight", f"must have shape (Cout, 4, K) = ({Cout}, 4, K), got {tuple(weight.shape)}")
    _check_device("weight", weight, pre.device)
    _check_index("mutants", mutants, (M, 3), pre.device, exact_int64=True)
    _check_ref(ref)
    _check_device("ref", ref, pre.device)
    _check_index("out_offset", out_offset, (M,), pre.device, exact_int64=True)
    if stride < 1:
        _fail("stride", f"must be >= 1, got {stride}")
    if padding < 0:
        _fail("padding", f"must be >= 0, got {padding}")
    if dilation < 1:
        _fail("dilation", f"must be >= 1, got {dilation}")
    return FLOAT_DTYPES[pre.dtype]


@torch.library.custom_op("basewise::conv_delta_", mutates_args=("pre",))
def _conv_delta_op(pre: Tensor, weight: Tensor, mutants: Tensor, ref: Tensor, out_offset: Tensor,
                   stride: int, padding: int, dilation: int) -> None:
    code = _meta_conv_delta(pre, weight, mutants, ref, out_offset, stride, padding, dilation)
    w, mu, r, off = weight.contiguous(), mutants.contiguous(), _u8(ref), out_offset.contiguous()
    M, Cout, W = pre.shape
    K = w.shape[2]
    B, L = r.shape
    if _use_torch(pre):
        _torch_ops.conv_delta_(pre, w, mu, r, off, stride, padding, dilation)
        return
    with _native(pre) as (dev, stream, nt):
        _C.conv_delta(dev, stream, pre.data_ptr(), w.data_ptr(), mu.data_ptr(), r.data_ptr(),
                      off.data_ptr(), M, Cout, W, K, B, L, stride, padding, dilation, code, nt)


@_conv_delta_op.register_fake
def _(pre: Tensor, weight: Tensor, mutants: Tensor, ref: Tensor, out_offset: Tensor, stride: int,
      padding: int, dilation: int) -> None:
    _meta_conv_delta(pre, weight, mutants, ref, out_offset, stride, padding, dilation)


def conv_delta_(pre: Tensor, weight: Tensor, mutants: Tensor, ref: Tensor, out_offset: Tensor,
                stride: int, padding: int, dilation: int, *, check: bool = True) -> None:
    """Update a window of a Conv1d's reference pre-activation for single-base mutants, in place.

    ``pre[m]`` is the window of the reference output starting at output position ``out_offset[m]``.
    For the mutant ``(seq, pos, base)`` with ``old = ref[seq, pos]``, every tap t with
    ``(pos + padding - t * dilation)`` divisible by ``stride`` hits output ``o`` = that quotient,
    i.e. window column ``j = o - out_offset[m]``; if 0 <= j < W:
    ``pre[m, :, j] += weight[:, base, t] - (weight[:, old, t] if old < 4 else 0)``, computed in
    float32 and rounded once to ``pre``'s dtype. (A bias is unchanged by a substitution.)

    Args:
        pre: (M, Cout, W) float32, float16 or bfloat16, contiguous; updated in place.
        weight: (Cout, 4, K) float weight of the Conv1d (converted to float32), on ``pre``'s device.
        mutants: (M, 3) integer rows (seq, pos, base), 0 <= pos < L, base 0-3.
        ref: (B, L) uint8 or int8 base indices (0-4) of the reference sequences.
        out_offset: (M,) integer output position of each window's first column.
        stride: the Conv1d's stride (>= 1).
        padding: the Conv1d's left zero padding (>= 0).
        dilation: the Conv1d's dilation (>= 1).
        check: keyword-only, default True: check value ranges (one sync on CUDA).

    Raises:
        ValueError: naming the offending argument.

    Example:
        >>> import torch
        >>> from basewise.ops import conv_delta_
        >>> w = torch.arange(8.0).reshape(1, 4, 2)                        # (Cout, 4, K)
        >>> ref = torch.tensor([[0, 0, 0]], dtype=torch.uint8)
        >>> pre = torch.zeros(1, 1, 3)                                    # outputs 0..2
        >>> conv_delta_(pre, w, torch.tensor([[0, 1, 2]]), ref, torch.tensor([0]), 1, 0, 1)
        >>> pre[0].tolist()                                               # taps 0 and 1 of G - A
        [[4.0, 4.0, 0.0]]
    """
    pre = _check_float("pre", pre, tuple(FLOAT_DTYPES))
    _check_supported_device("pre", pre)
    if pre.dim() != 3:
        _fail("pre", f"must have shape (M, Cout, W), got {tuple(pre.shape)}")
    weight = _check_tensor("weight", weight)
    if not weight.is_floating_point():
        _fail("weight", f"must be a floating-point tensor, got dtype {weight.dtype}")
    _check_device("weight", weight, pre.device)
    weight = weight.detach().to(torch.float32).contiguous()
    _check_ref(ref)
    mutants = _prep_idx("mutants", mutants, (pre.shape[0], 3), pre.device)
    out_offset = _prep_idx("out_offset", out_offset, (pre.shape[0],), pre.device)
    stride = _check_int("stride", stride)
    padding = _check_int("padding", padding)
    dilation = _check_int("dilation", dilation)
    _meta_conv_delta(pre, weight, mutants, ref, out_offset, stride, padding, dilation)
    if check and not _skip_value_checks():
        B, L = ref.shape
        _raise_first([_ref_flag(ref)] + _mutant_flags(mutants, B, 0, L))
    torch.ops.basewise.conv_delta_(pre, weight, mutants, ref, out_offset, stride, padding, dilation)

"""Exact incremental in-silico mutagenesis: recompute only what a substitution can reach.

A single-base substitution at input position ``p`` changes only a window of every tensor that is
computed by *local* operations (convolutions, pooling, elementwise functions, batch norm in
evaluation mode, residual additions, channel concatenation, crops and pads along the length). This
package captures a model's computation graph for one input length, finds for every local tensor the
window a substitution at ``p`` can change, and predicts mutants by recomputing only those windows:

* the reference sequences are run once and the activations the windows need are cached;
* per batch of mutants every local operation runs on one ``(M, C, W)`` tensor of fixed width ``W``
  (windows are shifted inward at the sequence ends, never shrunk, so shapes stay static);
* the first convolution is not computed at all: the change of a one-hot column adds
  ``weight[:, new] - weight[:, old]`` to the cached pre-activation;
* at the first *global* operation (anything without a locality rule: flatten + dense, pooling over
  the whole length, attention, ...) the windows are spliced into the cached reference activations
  and the rest of the graph runs at full length, except that a global operation that is linear in
  the changed window (mean or sum over the length, flatten followed by a dense layer) is applied to
  the window's change only.

The result equals full recomputation up to floating-point rounding (float32: ~1e-6 of the output
scale). Operations without a rule are always treated as global: nothing is approximated.

**Why torch.export and not torch.fx symbolic tracing.** ``torch.export`` (non-strict, dynamic batch
dimension) records the model as a graph of ATen operators with the static shape of every tensor.
Every way of writing a convolution (``nn.Conv1d``, ``F.conv1d``, a custom module) becomes the same
``aten.conv1d`` node, so the locality rules are a short table over a canonical operator set, and
"no rule means global" is a meaningful safety net. Shapes are known for every node without running
the model. ``torch.fx.symbolic_trace`` works at the level of modules, functions and tensor methods,
whose variety is unbounded, carries no shapes, and fails on the shape-dependent Python that
genomics models use (e.g. crops computed from ``x.shape``). The cost is a capture of about one
second per (model, length), which :func:`plan_ism` caches.

**Plan.** Every node that depends on the input is *local* (it has a length axis ``ldim`` and a
rule) or *global*. Local rules: ``conv1d`` (any stride, dilation, padding, groups), transposed
``conv1d``, max/avg pooling (avg only without partial windows), adaptive avg pooling with equal
bins, batch norm in eval mode, dropout in eval mode, elementwise functions and binary ops
(constants must not vary along the length), channel ``cat``, crops (``slice``) and constant pads
along the length, transposes/permutes/reshapes that keep the length axis whole, reshapes that
split the length into (L/p, p) blocks (a pool of size = stride = p: Enformer's attention pooling,
``x.view(B, C, L // 4, 4).amax(-1)``) or merge such blocks back (a transposed conv of kernel =
stride = p), 1x1 ``conv2d`` and ``einsum`` projections that keep the length letter, layer norm,
softmax, reductions and dense layers over non-length axes. For every local tensor the planner
computes, for each position ``p``, the hull of the outputs a substitution at ``p`` can change
(numpy tables over all ``p``), intersects it with the *demand* (the positions some consumer reads:
a crop before a global op makes the last layers cheaper), and fixes a static width ``W`` (the
largest hull; a hull wider than 60% of the demanded span becomes the whole span). A tensor whose
only consumer is a pool, crop or elementwise op takes exactly the window that consumer reads, so
chains such as batch norm -> ReLU -> max pool run without gathers. Global ops that are linear in
the window (``mean``/``sum`` over the length, ``adaptive_avg_pool1d`` to 1, ``flatten`` feeding
only ``linear`` layers) become *linear-global*: reference output plus the op applied to the
window's change (``W[:, window] @ delta`` for the dense layer, grouped by window offset).

**Executor.** Per batch of mutants, a local op reads each input at the window it needs: directly
when the input's window is that window, else by gathering the cached reference window and
overwriting the input's changed columns (``basewise.ops.gather_windows`` / ``splice_windows``,
C++/CUDA; plain PyTorch for other dtypes). A gathered window contained in a wider one of the same
tensor (the residual input of a dilated block inside its convolution's input) is a slice of it.
Elementwise ops run in place on buffers no other op reads. Memory is bounded: reference
activations are cached for blocks of sequences (``cache_bytes``), mutants run in sub-batches
(``max_batch``).

**Cost model: a timed probe, not machine constants.** ``engine="auto"`` needs the speed-up of
the incremental path over full recompute on this machine. Counting FLOPs alone mispredicted both
ways (Enformer-like: 1.08x predicted, 1.44x measured; a small conv + transformer: 3.66x predicted,
1.27x measured), and a roofline with measured machine constants (GEMM FLOP/s, memory bandwidth)
cannot see what dominates real runs either: a softmax over a 2-wide pool window runs two orders of
magnitude below the bandwidth, a convolution on a 15-wide window below the GEMM peak, and a
working set of 64 full-length Enformer activations falls out of every cache. So the decision is
measured: :func:`measure_plan` times one batch of mutants each way (the engine's own full-recompute
predictor and :class:`IncrementalPredictor`, a random reference, mutants at the centre, after a
warm-up; runs alternated, each side's fastest of up to 5 within a ~1.5 s budget) and caches the
:class:`IsmProbe` with the plan, per batch size, thread count, device and dtype. ``ISM_predict``
measures it on its first ``engine="auto"`` call that may capture a plan; :func:`ism_plan_report`
prints it. Where no probe exists (jobs too small to capture for), a static model decides: per node FLOPs and
activation bytes read and written (window gathers and the splices into full-length tensors
included), turned into time with fixed effective CPU rates (:attr:`IsmPlan.static_ratio`,
threshold :data:`INCREMENTAL_MIN_RATIO`).

**Not supported** (``plan.supported`` is False, the engine uses full recompute): models that do
not capture with ``torch.export`` (data-dependent control flow), several inputs, tuple outputs
without a transform that reduces them, autocast dtypes, and models where no op is local.

**Layout.** Window propagation is a transformation of the captured graph, written as tables of
rules plus small drivers (as JAX's interpreters keep one rule per primitive per transformation):

* :mod:`.capture`: ``torch.export`` capture into a graph of nodes (``_Graph``, ``_Node``) with
  static shapes, and the per-model plan cache.
* :mod:`.rules`: the rule tables. ``OP_RULES`` maps each ATen operator to an ``OpRule``: how the
  changed window of its output follows from its input's (``local``), whether it is linear in a
  window where it is global (``linear_global``) and its FLOPs (``flops``). ``WINDOW_RULES`` maps
  each window rule (``conv``, ``pool``, ``pointwise``, ...) to the input windows it reads. An
  operator without an entry stays global: the plan's report says "no locality rule for <op>".
  A new elementwise operator is one entry (``register_op_rule(op, POINTWISE)``) plus a test.
* :mod:`.plan`: ``IsmPlan`` and ``LayerInfo`` (what a plan is; the ``engine="auto"`` thresholds).
* :mod:`.planner`: :func:`plan_ism`, :func:`ism_plan_report` and the passes (classify, demands,
  static windows, pull-back, reach).
* :mod:`.cost`: the static cost model (FLOPs and bytes) and the timed probe (:func:`measure_plan`).
* :mod:`.executor`: :class:`IncrementalPredictor`; its per-rule window steps are the table
  ``IncrementalPredictor._STEPS`` (window rule name -> method).

Public names: :func:`plan_ism`, :func:`ism_plan_report`, :class:`IsmPlan`, :class:`LayerInfo`,
:class:`IncrementalPredictor`, :data:`INCREMENTAL_MIN_RATIO`, :func:`measure_plan`,
:class:`IsmProbe`, :data:`PROBE_MIN_RATIO`.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 5, padding=2), torch.nn.ReLU(),
    ...                           torch.nn.Conv1d(8, 1, 5, padding=2)).eval()
    >>> plan = plan_ism(net, 200)
    >>> plan.supported
    True
    >>> ref = torch.randint(0, 4, (1, 200), dtype=torch.int8)
    >>> pred = IncrementalPredictor(plan, ref)
    >>> muts = torch.tensor([[0, 10, 2], [0, 199, 1]])
    >>> pred.predict(muts).shape
    torch.Size([2, 1, 200])
"""

# the private helpers live in the submodules (basewise.incremental.rules._classify, ...)
from .cost import IsmProbe, measure_plan
from .executor import IncrementalPredictor
from .plan import INCREMENTAL_MIN_RATIO, PROBE_MIN_RATIO, IsmPlan, LayerInfo
from .planner import ism_plan_report, plan_ism
from .rules import OP_RULES, POINTWISE, WINDOW_RULES, OpRule, WindowRule, register_op_rule

__all__ = ["plan_ism", "ism_plan_report", "IsmPlan", "LayerInfo", "IncrementalPredictor",
           "INCREMENTAL_MIN_RATIO", "IsmProbe", "measure_plan", "PROBE_MIN_RATIO",
           "OpRule", "WindowRule", "OP_RULES", "WINDOW_RULES", "POINTWISE", "register_op_rule"]

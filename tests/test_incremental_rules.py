"""The incremental engine's rule tables (basewise.incremental.rules).

Every operator the engine knows is one :class:`OpRule` entry in ``OP_RULES``; every window rule a
local node can get is one :class:`WindowRule` in ``WINDOW_RULES`` with an executor step of the
same name. An operator without an entry stays global, and the plan says so by name; registering
an entry is all it takes to make a new elementwise operator local, exactly.
"""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import basewise
from basewise.incremental import (OP_RULES, POINTWISE, WINDOW_RULES, IncrementalPredictor, OpRule, WindowRule,
                                  plan_ism, register_op_rule)
from basewise.incremental import rules

RTOL = 1e-5


# an elementwise custom operator the engine has no rule for (torch.library: captured by
# torch.export as the ATen-level call torch.ops.basewise_test.softsign.default)
@torch.library.custom_op("basewise_test::softsign", mutates_args=())
def _softsign(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + x.abs())


@_softsign.register_fake
def _(x):
    return torch.empty_like(x)


SOFTSIGN = torch.ops.basewise_test.softsign.default


class _SoftsignNet(nn.Module):
    def __init__(self, first: bool):
        super().__init__()
        self.first = first
        self.c1 = nn.Conv1d(4, 6, 5, padding=2)
        self.c2 = nn.Conv1d(6, 2, 3, padding=1)

    def forward(self, x):
        if self.first:  # the op reads the input: nothing after it can be local
            return self.c2(self.c1(torch.ops.basewise_test.softsign(x)))
        return self.c2(torch.ops.basewise_test.softsign(self.c1(x)))


def test_every_op_rule_has_what_a_rule_needs():
    assert len(OP_RULES) > 50
    for op, rule in OP_RULES.items():
        assert isinstance(op, torch._ops.OpOverload), op
        assert isinstance(rule, OpRule) and rule.name, op
        assert rule.local is not None or rule.flops is not None, f"{op}: an entry with nothing in it"
        for fn in (rule.local, rule.linear_global, rule.flops):
            assert fn is None or callable(fn), op
    # the linear-global rules sit on ops that are also classified
    assert OP_RULES[torch.ops.aten.mean.dim].linear_global is not None
    assert OP_RULES[torch.ops.aten.mean.dim].local is not None


def test_every_window_rule_has_a_step_and_its_reads():
    assert set(WINDOW_RULES) == set(IncrementalPredictor._STEPS)
    for name, rule in WINDOW_RULES.items():
        assert isinstance(rule, WindowRule) and rule.name == name
        assert callable(rule.demand)
        assert rule.fresh in ("new", "assembly", "inherit"), name
        # every rule but the input and the first-layer delta reads input windows
        assert (rule.reads is None) == (name in ("input", "delta")), name
        assert not rule.pull_back or rule.reads is not None, name


def test_register_op_rule_checks_its_arguments():
    with pytest.raises(TypeError):
        register_op_rule(torch.ops.aten.relu.default, "pointwise")
    with pytest.raises(TypeError):
        register_op_rule([torch.relu], POINTWISE)


def test_an_op_without_a_rule_is_global_and_named():
    assert SOFTSIGN not in OP_RULES
    torch.manual_seed(0)
    plan = plan_ism(_SoftsignNet(first=True).eval(), 40, use_cache=False)
    assert not plan.supported
    assert "basewise_test.softsign.default" in plan.reason, plan.reason
    plan = plan_ism(_SoftsignNet(first=False).eval(), 40, use_cache=False)
    assert plan.supported, plan.reason  # the first convolution is still local
    row = next(l for l in plan.layers if "softsign" in l.op)
    assert row.kind == "global" and row.note == "no locality rule for basewise_test.softsign.default"


def test_adding_a_rule_is_one_entry():
    """Register the custom op as elementwise: it runs on windows, and ISM is exact."""
    torch.manual_seed(1)
    model = _SoftsignNet(first=False).eval()
    seqs = ["".join(np.random.default_rng(s).choice(list("ACGTN"), 41)) for s in range(2)]
    full = basewise.ISM_predict(seqs, model, return_df=False, engine="full")
    register_op_rule(SOFTSIGN, POINTWISE)
    try:
        plan = plan_ism(model, 41)
        assert plan.supported, plan.reason
        row = next(l for l in plan.layers if "softsign" in l.op)
        assert row.kind == "local" and row.window < 41, row
        # every layer after the input is computed on windows
        assert all(l.kind in ("local", "delta") for l in plan.layers), str(plan)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback to full recompute
            inc = basewise.ISM_predict(seqs, model, return_df=False, engine="incremental")
        assert float(np.abs(inc - full).max()) <= RTOL * float(np.abs(full).max())
    finally:
        OP_RULES.pop(SOFTSIGN, None)
    assert SOFTSIGN not in rules.OP_RULES


def test_classify_driver_looks_ops_up():
    """The driver knows no op by name: a rule's effect comes from its table entry alone."""
    seen = []

    def spy(n, b, x, locs):
        seen.append(n.name)
        POINTWISE.local(n, b, x, locs)

    register_op_rule(SOFTSIGN, OpRule("spy", local=spy))
    try:
        torch.manual_seed(2)
        plan = plan_ism(_SoftsignNet(first=False).eval(), 30, use_cache=False)
        assert plan.supported and seen
        assert next(l for l in plan.layers if "softsign" in l.op).kind == "local"
    finally:
        OP_RULES.pop(SOFTSIGN, None)

"""Tests of basewise.transforms.Aggregate against a plain-numpy reference of gReLU's semantics."""

import itertools

import numpy as np
import pytest
import torch

from basewise.transforms import Aggregate, UnknownAggFuncError

NP_AGG = {
    "sum": lambda x, axis: x.sum(axis=axis, keepdims=True),
    "mean": lambda x, axis: x.mean(axis=axis, keepdims=True),
    "min": lambda x, axis: x.min(axis=axis, keepdims=True),
    "max": lambda x, axis: x.max(axis=axis, keepdims=True),
    "absmax": lambda x, axis: np.abs(x).max(axis=axis, keepdims=True),
}


def reference(x, tasks=None, except_tasks=None, positions=None, length_aggfunc=None, task_aggfunc=None, weight=None):
    """gReLU's order: bins, then tasks (or all but except_tasks), length agg, task agg, weight."""
    x = np.asarray(x, dtype=np.float64)
    if positions is not None:
        x = x[:, :, positions]
    if tasks is not None:
        keep = [t for t in tasks if except_tasks is None or t not in except_tasks]
        x = x[:, keep, :]
    elif except_tasks is not None:
        x = x[:, [t for t in range(x.shape[1]) if t not in except_tasks], :]
    if length_aggfunc is not None:
        x = NP_AGG[length_aggfunc](x, 2)
    if task_aggfunc is not None:
        x = NP_AGG[task_aggfunc](x, 1)
    return x * (1 if weight is None else weight)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_configurations(seed):
    rng = np.random.default_rng(seed)
    B, T, L = int(rng.integers(1, 4)), int(rng.integers(2, 7)), int(rng.integers(1, 9))
    x = rng.normal(size=(B, T, L)).astype(np.float32)
    aggs = [None, "sum", "mean", "min", "max", "absmax"]
    for length_agg, task_agg in itertools.product(aggs, aggs):
        tasks = sorted(rng.choice(T, size=int(rng.integers(1, T + 1)), replace=False).tolist()) if rng.random() < 0.5 else None
        except_tasks = [int(rng.integers(0, T))] if rng.random() < 0.4 else None
        if tasks is not None and except_tasks is not None and set(tasks) <= set(except_tasks):
            except_tasks = None
        positions = sorted(rng.choice(L, size=int(rng.integers(1, L + 1)), replace=False).tolist()) if rng.random() < 0.5 else None
        weight = float(rng.normal()) if rng.random() < 0.3 else None
        kw = dict(tasks=tasks, except_tasks=except_tasks, positions=positions, length_aggfunc=length_agg,
                  task_aggfunc=task_agg, weight=weight)
        agg = Aggregate(**kw)
        want = reference(x, **kw)
        got = agg(torch.from_numpy(x))
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(want).max()))
        np.testing.assert_allclose(agg.compute(x), want, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(want).max()))


def test_full_aggregation_gives_one_number_per_sequence():
    x = torch.randn(5, 3, 7)
    y = Aggregate(length_aggfunc="sum", task_aggfunc="mean")(x)
    assert y.shape == (5, 1, 1)
    torch.testing.assert_close(y[:, 0, 0], x.sum(2).mean(1))


def test_no_options_is_identity_and_keeps_dtype():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    y = Aggregate()(x)
    assert y.dtype == torch.float64
    assert torch.equal(y, x)


def test_max_gradient_goes_to_one_index_like_torch_max():
    # gReLU uses torch.max(...)[0]: with ties the gradient goes to a single element (amax would split it)
    x = torch.tensor([[[1.0, 3.0, 3.0]]], requires_grad=True)
    Aggregate(length_aggfunc="max")(x).sum().backward()
    g = x.grad[0, 0]
    assert sorted(g.tolist()) == [0.0, 0.0, 1.0]
    assert g[0] == 0


def test_absmax_uses_absolute_values():
    x = torch.tensor([[[1.0, -5.0], [2.0, 4.0]]])
    assert Aggregate(length_aggfunc="absmax")(x).flatten().tolist() == [5.0, 4.0]


def test_callable_aggfunc():
    x = torch.randn(2, 3, 4)
    f = lambda t, axis, keepdims: t.pow(2).sum(dim=axis, keepdim=keepdims)  # noqa: E731
    torch.testing.assert_close(Aggregate(length_aggfunc=f)(x), x.pow(2).sum(2, keepdim=True))


class FakeLightning:
    """The two things Aggregate reads from a gReLU LightningModel."""

    model_params = {"n_tasks": 4}

    def get_task_idxs(self, names):
        order = ["a", "b", "c", "d"]
        return [order.index(n) for n in names]


def test_task_names_and_except_tasks_resolve_through_the_model():
    x = torch.arange(24.0).reshape(1, 4, 6)
    agg = Aggregate(tasks=["b", "d"], model=FakeLightning())
    assert agg.tasks == [1, 3]
    torch.testing.assert_close(agg(x), x[:, [1, 3]])
    agg = Aggregate(except_tasks=["a", "c"], model=FakeLightning())
    assert agg.tasks == [1, 3] and agg.except_tasks is None
    agg = Aggregate(tasks=[0, 1, 2], except_tasks=[1])
    assert agg.tasks == [0, 2]


def test_except_tasks_without_model_is_applied_at_call_time():
    x = torch.arange(12.0).reshape(1, 3, 4)
    agg = Aggregate(except_tasks=1)
    torch.testing.assert_close(agg(x), x[:, [0, 2]])


def test_index_forms_accepted():
    x = torch.randn(2, 5, 6)
    for sel in (3, [3], np.array([3]), torch.tensor([3]), range(3, 4)):
        torch.testing.assert_close(Aggregate(tasks=sel)(x), x[:, [3]])
    torch.testing.assert_close(Aggregate(positions=np.array([[1, 2]]))(x), x[:, :, [1, 2]])


def test_errors():
    with pytest.raises(UnknownAggFuncError, match="length_aggfunc"):
        Aggregate(length_aggfunc="median")
    with pytest.raises(NotImplementedError):  # gReLU's exception type still catches it
        Aggregate(task_aggfunc="bogus")
    with pytest.raises(ValueError, match="model"):
        Aggregate(tasks=["a"])
    with pytest.raises(ValueError, match="empty"):
        Aggregate(positions=[])
    with pytest.raises(ValueError, match="excluded"):
        Aggregate(tasks=[1], except_tasks=[1])
    with pytest.raises(IndexError, match="tasks"):
        Aggregate(tasks=[5])(torch.randn(1, 3, 2))
    with pytest.raises(IndexError, match="positions"):
        Aggregate(positions=[9])(torch.randn(1, 3, 2))
    with pytest.raises(ValueError, match=r"\(B, T, L_out\)"):
        Aggregate()(torch.randn(3, 2))
    with pytest.raises(ValueError, match="positions"):
        Aggregate(positions=[True])


def test_as_ism_prediction_transform_equals_aggregating_by_hand():
    from basewise import ISM_predict

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(4, 3, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv1d(3, 3, 1))
    agg = Aggregate(tasks=[0, 2], positions=list(range(2, 9)), length_aggfunc="mean", task_aggfunc="max", weight=2.0)

    class ByHand(torch.nn.Module):
        def forward(self, x):
            y = net(x)[:, [0, 2], 2:9]
            return 2.0 * y.mean(2, keepdim=True).max(1, keepdim=True).values

    seqs = ["ACGTNACGTTAGCA", "TTTTACGAGGACCA"]
    got = ISM_predict(seqs, net, prediction_transform=agg, return_df=False, progress=False, engine="full")
    want = ISM_predict(seqs, ByHand(), return_df=False, progress=False, engine="full")
    assert got.shape == (2, 14, 4, 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

"""Tests of basewise.plot: figures render to PNG and draw the numbers they are given."""

import io

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("logomaker")

from matplotlib.figure import Figure  # noqa: E402

from basewise.plot import (  # noqa: E402
    ism_logo_heights,
    plot_attention_matrix,
    plot_attributions,
    plot_ISM,
    plot_ism,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def render(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    data = buf.getvalue()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    return data


def random_ism(seed=0, ref="ACGTNACGTA"):
    rng = np.random.default_rng(seed)
    vals = rng.normal(size=(4, len(ref))).astype(np.float32)
    for j, b in enumerate(ref):
        if b in "ACGT":
            vals["ACGT".index(b), j] = 0.0  # the reference entry of a subtract ISM
    return pd.DataFrame(vals, index=list("ACGT"), columns=list(ref))


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    """The plot functions must not leave figures in pyplot's global registry."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before


def test_ism_heatmap_draws_the_dataframe():
    df = random_ism(1)
    fig = plot_ism(df, method="heatmap")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), df.to_numpy())
    lo, hi = ax.images[0].get_clim()
    assert lo == -hi and hi == pytest.approx(np.abs(df.to_numpy()).max(), rel=1e-6)  # centred at 0
    assert [t.get_text() for t in ax.get_yticklabels()] == list("ACGT")
    assert [t.get_text() for t in ax.get_xticklabels()] == list(df.columns)  # reference bases
    render(fig)


def test_ism_heatmap_window_and_gReLU_name():
    df = random_ism(2, ref="ACGTACGTAC" * 3)
    fig = plot_ISM(df, start_pos=5, end_pos=12, colorbar=False)
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), df.iloc[:, 5:12].to_numpy())
    render(fig)


def test_ism_logo_heights_follow_gReLU_convention():
    df = random_ism(3)
    h = ism_logo_heights(df)  # (P, 4)
    means = -df.to_numpy(dtype=np.float64).mean(axis=0)
    for j, ref in enumerate(df.columns):
        row = h.iloc[j].to_numpy()
        if ref == "N":
            assert not row.any()
        else:
            b = "ACGT".index(ref)
            assert row[b] == pytest.approx(means[j])
            assert np.count_nonzero(np.delete(row, b)) == 0


def test_ism_logo_renders_with_highlight():
    df = random_ism(4)
    fig = plot_ism(df, method="logo", highlight=(2, 5), title="t")
    assert fig.axes[0].get_title() == "t"
    render(fig)


def test_ism_draws_into_given_axes():
    fig = Figure()
    ax1, ax2 = fig.subplots(2, 1)
    out = plot_ism(random_ism(5), method="logo", ax=ax2)
    assert out is fig and len(fig.axes) == 2 and ax1.has_data() is False and ax2.has_data()


def test_ism_from_ISM_predict():
    from basewise import ISM_predict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(4, 1, 3, padding=1), torch.nn.AdaptiveAvgPool1d(1))
    df = ISM_predict("ACGTACGGTA", model, compare_func="subtract", progress=False)
    for method in ("heatmap", "logo"):
        render(plot_ism(df, method=method))


def test_ism_bad_inputs():
    with pytest.raises(TypeError, match="DataFrame"):
        plot_ism(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="A, C, G, T"):
        plot_ism(pd.DataFrame(np.zeros((3, 3))))
    with pytest.raises(ValueError, match="method"):
        plot_ism(random_ism(), method="bars")
    with pytest.raises(ValueError, match="start_pos"):
        plot_ism(random_ism(), start_pos=8, end_pos=3)


def test_attributions_logo_letter_heights():
    rng = np.random.default_rng(6)
    attrs = rng.normal(size=(4, 12)).astype(np.float32)
    fig = plot_attributions(attrs, start_pos=2, end_pos=10, figsize=(6, 1.5), highlight_positions=[4],
                            highlight_intervals=[(6, 8)], ylim=(-3, 3))
    ax = fig.axes[0]
    assert ax.get_ylim() == (-3, 3)
    render(fig)
    # logomaker stacks positive letters upwards and negative ones downwards from 0
    import logomaker

    df = pd.DataFrame(attrs[:, 2:10].T, columns=list("ACGT"))
    ref = logomaker.Logo(df, ax=Figure().add_subplot(111))
    fig2 = plot_attributions(attrs, start_pos=2, end_pos=10)
    got = sorted(round(p.get_path().get_extents().height, 4) for p in fig2.axes[0].patches)
    want = sorted(round(p.get_path().get_extents().height, 4) for p in ref.ax.patches)
    assert got == want


def test_attributions_accepts_batched_torch_and_rejects_bad_shapes():
    render(plot_attributions(torch.randn(1, 4, 20), figsize=(5, 1)))
    with pytest.raises(ValueError, match=r"\(4, L\)"):
        plot_attributions(np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(4, L\)"):
        plot_attributions(np.zeros((5, 4)))


def test_attention_matrix():
    rng = np.random.default_rng(7)
    a = rng.random((16, 16))
    a /= a.sum(1, keepdims=True)
    fig = plot_attention_matrix(a, start_pos=1000, end_pos=1160,
                                highlight_intervals=pd.DataFrame({"start": [1040], "end": [1080]}))
    ax = fig.axes[0]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), a)
    assert ax.get_xlabel() == "Attended to" and ax.get_ylabel() == "Attended by"
    assert ax.get_xticklabels()[0].get_text() == "1000"
    assert len(ax.patches) == 1
    render(fig)
    render(plot_attention_matrix(torch.from_numpy(a)[None, None]))  # (1, 1, L', L') squeezed
    with pytest.raises(ValueError, match="square"):
        plot_attention_matrix(np.zeros((2, 4, 4)))

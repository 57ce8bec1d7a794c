"""Tests of the TF-MoDISco (modisco-lite) export."""

import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest

from basewise.modisco import NpzStreamWriter, export_modisco, export_modisco_from_results, load_modisco_input


def random_onehot(rng, n, L, n_frac=0.0):
    idx = rng.integers(0, 4, size=(n, L))
    x = np.eye(4, dtype=np.float32)[idx].transpose(0, 2, 1)  # (n, 4, L)
    x[:, :, rng.random(L) < n_frac] = 0  # N columns
    return x, idx


def test_export_layout_is_what_modisco_reads(tmp_path):
    rng = np.random.default_rng(0)
    x, _ = random_onehot(rng, 5, 30, n_frac=0.1)
    hyp = rng.normal(size=x.shape).astype(np.float32)
    s, a = export_modisco(x, hyp, tmp_path / "m")
    for path, want in ((s, x), (a, hyp)):
        with zipfile.ZipFile(path) as z:
            assert z.namelist() == ["arr_0.npy"]
        with np.load(path) as z:  # the documented rule: np.load(path)["arr_0"], (N, 4, L)
            got = z["arr_0"]
        assert got.shape == (5, 4, 30) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(load_modisco_input(path), want)


def test_export_accepts_strings_and_torch(tmp_path):
    import torch

    seqs = ["ACGTA", "TTGCA"]
    hyp = torch.randn(2, 4, 5)
    s, a = export_modisco(seqs, hyp, tmp_path, seq_name="s.npz", attr_name="a.npz")
    from basewise.sequence import to_onehot

    np.testing.assert_array_equal(load_modisco_input(s), to_onehot(seqs).numpy())
    np.testing.assert_array_equal(load_modisco_input(a), hyp.numpy())


def test_export_warns_for_non_hypothetical_and_checks_shapes(tmp_path):
    rng = np.random.default_rng(1)
    x, _ = random_onehot(rng, 2, 8)
    with pytest.warns(UserWarning, match="hypothetical"):
        export_modisco(x, x * 0.3, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_modisco(x, x - 0.25, tmp_path)
    with pytest.raises(ValueError, match="attributions"):
        export_modisco(x, x[:, :, :4], tmp_path)
    with pytest.raises(ValueError, match="onehot"):
        export_modisco(x[:, :3], x[:, :3], tmp_path)


@pytest.mark.parametrize("compress", [True, False])
def test_stream_writer_equals_savez(tmp_path, compress):
    rng = np.random.default_rng(2)
    arr = rng.normal(size=(11, 4, 7)).astype(np.float32)
    p = tmp_path / "s.npz"
    with NpzStreamWriter(p, arr.shape, arr.dtype, compress=compress) as w:
        for s in (slice(0, 3), slice(3, 4), slice(4, 11)):
            w.append(arr[s])
    with np.load(p) as z:
        np.testing.assert_array_equal(z["arr_0"], arr)
    with pytest.raises(ValueError, match="rows"):
        with NpzStreamWriter(tmp_path / "x.npz", (2, 3), np.float32) as w:
            w.append(np.zeros((3, 3)))
    assert not (tmp_path / "x.npz").exists()  # a failed export leaves no half file
    w = NpzStreamWriter(tmp_path / "y.npz", (2, 3), np.float32)
    w.append(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="1 of 2 rows"):
        w.close()
    assert not (tmp_path / "y.npz").exists()


def _attribution_results(path, rng, n=6, L=20, hypothetical=True, done=None):
    from basewise.results import ResultsWriter

    x, idx = random_onehot(rng, n, L)
    hyp = rng.normal(size=(n, 4, L)).astype(np.float32)
    regions = pd.DataFrame({"name": [f"r{i}" for i in range(n)], "chrom": "chr1", "start": np.arange(n) * L,
                            "end": np.arange(n) * L + L, "strand": "+"})
    rows = np.arange(n) if done is None else np.asarray(done)
    with ResultsWriter(path, "attribution", regions, L, {"method": "deepshap", "hypothetical": hypothetical},
                       chunk_regions=2) as w:
        w.write(rows, idx[rows].astype(np.int8), hyp[rows])
    return x, hyp


def test_export_from_results_streams_in_chunks(tmp_path):
    pytest.importorskip("h5py")
    rng = np.random.default_rng(3)
    x, hyp = _attribution_results(tmp_path / "a.h5", rng)
    s, a = export_modisco_from_results(tmp_path / "a.h5", tmp_path / "out", chunk_size=4)
    np.testing.assert_array_equal(load_modisco_input(s), x)
    np.testing.assert_array_equal(load_modisco_input(a), hyp)


def test_export_from_results_refusals(tmp_path):
    pytest.importorskip("h5py")
    rng = np.random.default_rng(4)
    _attribution_results(tmp_path / "nh.h5", rng, hypothetical=False)
    with pytest.raises(ValueError, match="hypothetical"):
        export_modisco_from_results(tmp_path / "nh.h5", tmp_path / "o")
    export_modisco_from_results(tmp_path / "nh.h5", tmp_path / "o", allow_non_hypothetical=True)
    x, hyp = _attribution_results(tmp_path / "part.h5", rng, done=[0, 1, 4])
    with pytest.raises(ValueError, match="unfinished"):
        export_modisco_from_results(tmp_path / "part.h5", tmp_path / "o")
    s, a = export_modisco_from_results(tmp_path / "part.h5", tmp_path / "o", allow_incomplete=True, chunk_size=3)
    np.testing.assert_array_equal(load_modisco_input(s), x[[0, 1, 4]])
    np.testing.assert_array_equal(load_modisco_input(a), hyp[[0, 1, 4]])


def test_modiscolite_reader_and_window(tmp_path):
    """modisco-lite's own input reader, and its window/transpose step, on the exported files."""
    cli = pytest.importorskip("modiscolite.cli")
    from pathlib import Path

    from modiscolite.util import calculate_window_offsets

    rng = np.random.default_rng(5)
    x, _ = random_onehot(rng, 3, 50)
    hyp = rng.normal(size=x.shape).astype(np.float32)
    s, a = export_modisco(x, hyp, tmp_path)
    seqs = cli._load_input(Path(s))
    attrs = cli._load_input(Path(a))
    np.testing.assert_array_equal(seqs, x)
    np.testing.assert_array_equal(attrs, hyp)
    # what `modisco motifs -w 20` then does with them
    start, end = calculate_window_offsets(seqs.shape[2] // 2, 20)
    one_hot = seqs[:, :, start:end].transpose(0, 2, 1).astype("float32")  # (N, w, 4)
    assert one_hot.shape == (3, 20, 4)
    assert np.all(one_hot.sum(-1) == 1)  # still one base per position after their transpose

"""Tests of the resumable HDF5 results file (basewise.results)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

h5py = pytest.importorskip("h5py")

from basewise.results import ResultsMismatchError, ResultsWriter, open_results  # noqa: E402


def make_regions(n, L=6):
    return pd.DataFrame({
        "name": [f"r{i}" for i in range(n)],
        "chrom": ["chr1" if i % 2 else "chr2" for i in range(n)],
        "start": np.arange(n) * 10,
        "end": np.arange(n) * 10 + L,
        "strand": ["+" if i % 3 else "-" for i in range(n)],
    })


def random_batch(rng, idx, L=6, tail=(4, 1, 1)):
    seqs = rng.integers(0, 5, size=(len(idx), L)).astype(np.int8)
    scores = rng.normal(size=(len(idx), L) + tail).astype(np.float32)
    return seqs, scores


def test_roundtrip_layout_readable_with_plain_h5py(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "r.h5"
    regions = make_regions(7)
    args = {"start_pos": 0, "compare_func": "subtract", "transform": {"tasks": [1]}}
    seqs, scores = random_batch(rng, range(7))
    with ResultsWriter(path, "ism", regions, 6, args, chunk_regions=3) as w:
        assert not w.resumed
        w.write([0, 1, 2], seqs[:3], scores[:3])
        w.write([4, 6], seqs[[4, 6]], scores[[4, 6]])  # non-contiguous
        assert w.todo().tolist() == [3, 5]
    # without basewise: plain h5py
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "basewise-results" and f.attrs["kind"] == "ism"
        assert json.loads(f.attrs["arguments"]) == args
        assert f.attrs["score_axes"] == "region,position,base,task,bin"
        assert f["done"][()].tolist() == [1, 1, 1, 0, 1, 0, 1]
        np.testing.assert_array_equal(f["scores"][[0, 1, 2, 4, 6]], scores[[0, 1, 2, 4, 6]])
        assert np.isnan(f["scores"][3]).all()  # never written: the fill value
        np.testing.assert_array_equal(f["sequences"][6], seqs[6])
        assert [s.decode() for s in f["regions/name"][()]] == list(regions.name)
        np.testing.assert_array_equal(f["regions/start"][()], regions.start)
        assert [s.decode() for s in f["regions/strand"][()]] == list(regions.strand)
        assert f["scores"].chunks[0] <= 3 and f["scores"].compression == "gzip"
    with open_results(path) as r:
        assert len(r) == 7 and not r.complete and r.kind == "ism"
        assert list(r.regions.columns) == ["name", "chrom", "start", "end", "strand"]
        for col in r.regions.columns:
            assert r.regions[col].tolist() == regions[col].tolist()
        chunks = list(r.iter_chunks(size=4))
        assert [c[0].tolist() for c in chunks] == [[0, 1, 2], [4, 6]]
        np.testing.assert_array_equal(chunks[1][2], scores[[4, 6]])


def test_resume_with_same_arguments_lists_remaining_regions(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "r.h5"
    regions, args = make_regions(5), {"method": "saliency"}
    seqs, scores = random_batch(rng, range(5), tail=())
    scores = rng.normal(size=(5, 4, 6))  # float64 attributions are kept as float64
    with ResultsWriter(path, "attribution", regions, 6, args) as w:
        w.write([0, 1], seqs[:2], scores[:2])
    with ResultsWriter(path, "attribution", regions, 6, dict(args)) as w:
        assert w.resumed and w.todo().tolist() == [2, 3, 4]
        w.write([2, 3, 4], seqs[2:], scores[2:])
    with open_results(path) as r:
        assert r.complete and r.scores.dtype == np.float64
        np.testing.assert_array_equal(r.scores[()], scores)
        assert r.sequence(3) == "".join("ACGTN"[i] for i in seqs[3])


@pytest.mark.parametrize("change", ["arguments", "kind", "regions", "strand", "seq_len", "count"])
def test_refuses_to_resume_a_different_run(tmp_path, change):
    path = tmp_path / "r.h5"
    regions, args = make_regions(4), {"compare_func": "subtract"}
    rng = np.random.default_rng(5)
    with ResultsWriter(path, "ism", regions, 6, args) as w:
        w.write([1], *random_batch(rng, [1]))
    kw = dict(kind="ism", regions=regions, seq_len=6, arguments=args)
    if change == "arguments":
        kw["arguments"] = {"compare_func": "log2FC"}
    elif change == "kind":
        kw["kind"] = "attribution"
    elif change == "regions":
        kw["regions"] = regions.assign(start=regions.start + 1)
    elif change == "strand":
        kw["regions"] = regions.assign(strand="+")
    elif change == "seq_len":
        kw["seq_len"] = 7
    else:
        kw["regions"] = make_regions(3)
    with pytest.raises(ResultsMismatchError, match="refusing to resume"):
        ResultsWriter(path, **kw)
    # overwrite starts afresh
    with ResultsWriter(path, overwrite=True, **kw) as w:
        assert not w.resumed and len(w.todo()) == len(kw["regions"])


def test_refuses_foreign_files_and_bad_writes(tmp_path):
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(ResultsMismatchError, match="not a basewise results file"):
        ResultsWriter(foreign, "ism", make_regions(2), 6, {})
    with pytest.raises(ValueError, match="not a basewise results file"):
        open_results(foreign)
    with pytest.raises(FileNotFoundError):
        open_results(tmp_path / "missing.h5")
    rng = np.random.default_rng(2)
    with ResultsWriter(tmp_path / "r.h5", "ism", make_regions(4), 6, {}) as w:
        seqs, scores = random_batch(rng, range(4))
        with pytest.raises(ValueError, match="indices"):
            w.write([1, 0], seqs[:2], scores[:2])
        with pytest.raises(ValueError, match="indices"):
            w.write([3, 4], seqs[:2], scores[:2])
        with pytest.raises(ValueError, match="sequences"):
            w.write([0], seqs[:1, :5], scores[:1])
        w.write([0], seqs[:1], scores[:1])
        with pytest.raises(ResultsMismatchError, match="holds"):
            w.write([1], seqs[1:2], scores[1:2, :, :, :, 0])  # other shape than the first write
        assert w.todo().tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="kind"):
        ResultsWriter(tmp_path / "k.h5", "motifs", make_regions(2), 6, {})


def test_ism_dataframe_matches_ISM_predict(tmp_path):
    import torch

    from basewise import ISM_predict
    from basewise.sequence import to_indices

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(4, 1, 3, padding=1), torch.nn.AdaptiveAvgPool1d(1))
    seqs = ["ACGTTGCA", "GGGNACTA"]
    arr = ISM_predict(seqs, model, start_pos=2, end_pos=7, compare_func="subtract", return_df=False, progress=False)
    regions = make_regions(2, L=8)
    with ResultsWriter(tmp_path / "i.h5", "ism", regions, 8, {"start_pos": 2, "end_pos": 7}) as w:
        w.write([0, 1], to_indices(seqs), arr)
    with open_results(tmp_path / "i.h5") as r:
        for i, s in enumerate(seqs):
            want = ISM_predict(s, model, start_pos=2, end_pos=7, compare_func="subtract", progress=False)
            got = r.ism_dataframe(i)
            assert list(got.columns) == list(want.columns) == list(s[2:7])
            # one sequence vs a batch of two: equal up to float32 batch-composition rounding
            np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=0, atol=1e-6 * np.abs(want.to_numpy()).max())


def test_file_survives_a_killed_writer_and_resumes(tmp_path):
    """SIGKILL right after a chunk is written: the file opens, finished regions are kept."""
    path = tmp_path / "killed.h5"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np, pandas as pd
        from basewise.results import ResultsWriter
        regions = pd.DataFrame({{"name": list("abcdef"), "chrom": list("abcdef"), "start": 0, "end": 6,
                                "strand": "+"}})
        w = ResultsWriter({str(path)!r}, "ism", regions, 6, {{"x": 1}}, chunk_regions=2)
        for k in range(2):
            idx = [2 * k, 2 * k + 1]
            w.write(idx, np.full((2, 6), k, np.int8), np.full((2, 6, 4, 1, 1), k + 1, np.float32))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    regions = pd.DataFrame({"name": list("abcdef"), "chrom": list("abcdef"), "start": 0, "end": 6, "strand": "+"})
    with ResultsWriter(path, "ism", regions, 6, {"x": 1}) as w:
        assert w.resumed and w.todo().tolist() == [4, 5]
        w.write([4, 5], np.full((2, 6), 3, np.int8), np.full((2, 6, 4, 1, 1), 3, np.float32))
    with open_results(path) as r:
        assert r.complete
        assert r.scores[:, 0, 0, 0, 0].tolist() == [1, 1, 2, 2, 3, 3]


def test_a_file_without_finished_regions_is_started_afresh(tmp_path):
    path = tmp_path / "empty.h5"
    with ResultsWriter(path, "ism", make_regions(3), 6, {"compare_func": "subtract"}):
        pass  # e.g. the run failed before its first chunk
    with ResultsWriter(path, "attribution", make_regions(2), 5, {"method": "saliency"}) as w:
        assert not w.resumed and w.todo().tolist() == [0, 1]
    with open_results(path) as r:
        assert r.kind == "attribution" and len(r) == 2

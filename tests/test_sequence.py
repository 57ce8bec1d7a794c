"""Sequence input conversion (spec section 2.5) and model-state preservation."""

import sys
import numpy as np
import pandas as pd
import pytest
import torch

from basewise._model import preserved_model_state
from basewise.sequence import (
    SequenceInputError,
    indices_to_onehot,
    indices_to_strings,
    intervals_to_strings,
    reverse_complement,
    to_indices,
    to_onehot,
)


def reference_onehot(seq):
    """Plain per-letter one-hot (4, L); N all-zero."""
    out = np.zeros((4, len(seq)), dtype=np.float32)
    for i, c in enumerate(seq.upper()):
        if c != "N":
            out["ACGT".index(c), i] = 1
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_strings_roundtrip(seed):
    rng = np.random.default_rng(seed)
    n, length = int(rng.integers(1, 5)), int(rng.integers(0, 40))
    seqs = ["".join(rng.choice(list("ACGTNacgtn"), size=length)) for _ in range(n)]
    idx = to_indices(seqs)
    assert idx.dtype == np.int8 and idx.shape == (n, length)
    assert indices_to_strings(idx) == [s.upper() for s in seqs]
    oh = to_onehot(seqs)
    assert oh.dtype == torch.float32 and oh.shape == (n, 4, length)
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(oh[i].numpy(), reference_onehot(s))
    # every other form of the same data converts back to the same indices
    np.testing.assert_array_equal(to_indices(oh), idx)
    np.testing.assert_array_equal(to_indices(oh.numpy()), idx)
    np.testing.assert_array_equal(to_indices(idx.astype(np.int64)), idx)
    np.testing.assert_array_equal(to_indices(torch.from_numpy(idx)), idx)
    np.testing.assert_array_equal(indices_to_onehot(idx), oh)


def test_single_sequence_forms_get_batch_axis():
    assert to_indices("ACG").shape == (1, 3)
    assert to_indices(np.array([0, 1, 2], dtype=np.int8)).shape == (1, 3)
    assert to_onehot(torch.eye(4)).shape == (1, 4, 4)
    assert to_onehot(np.eye(4)).shape == (1, 4, 4)


def test_onehot_values_pass_through_to_onehot_but_argmax_to_indices():
    x = torch.tensor([[[0.2, 0.0], [0.7, 0.0], [0.1, 0.0], [0.0, 0.0]]])
    np.testing.assert_array_equal(to_onehot(x), x)
    assert to_indices(x).tolist() == [[1, 4]]


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        ("ACGU", ValueError, "not a valid DNA sequence"),
        ("ACGé", ValueError, "not a valid DNA sequence"),
        (["AC", "ACG"], SequenceInputError, "equal length"),
        ([b"AC"], TypeError, "DNA strings"),
        (np.array([[0, 1], [2, 7]], dtype=np.int8), ValueError, "index-encoded"),
        (np.array([[-1, 1]]), ValueError, "index-encoded"),
        (np.zeros((2, 2, 2, 2), dtype=np.int8), ValueError, "index-encoded"),
        (torch.zeros(3, 7), ValueError, "one-hot"),
        (torch.zeros(2, 5, 7), ValueError, "one-hot"),
        (np.zeros((7,), dtype=np.float32), ValueError, "one-hot"),
        ({"a": 1}, TypeError, "supported type"),
    ],
)
def test_bad_inputs(bad, exc, match):
    with pytest.raises(exc, match=match):
        to_indices(bad)


def test_intervals(tmp_path):
    fa = tmp_path / "g.fa"
    fa.write_text(">chr1\nACGTACGTAAccGGTT\n>chr2\nNNNN\n")
    df = pd.DataFrame({"chrom": ["chr1", "chr1", "chr2"], "start": [8, 8, 0], "end": [12, 12, 2],
                       "strand": ["+", "-", "+"]})
    assert intervals_to_strings(df, str(fa)) == ["AACC", "GGTT", "NN"]
    df["chrom"] = df["chrom"].astype("category")
    assert intervals_to_strings(df.iloc[:1], fa) == ["AACC"]
    with pytest.raises(SequenceInputError, match="genome"):
        intervals_to_strings(df, None)
    with pytest.raises(ValueError, match="genomic intervals"):
        intervals_to_strings(df.assign(start=df.start.astype(float)), str(fa))
    with pytest.raises(ValueError, match="genomepy|FASTA"):
        intervals_to_strings(df, str(tmp_path / "missing.fa"))
    # an in-memory genome (dict of chrom -> sequence) works too
    assert intervals_to_strings(df.iloc[:2], {"chr1": "ACGTACGTAAccGGTT"}) == ["AACC", "GGTT"]


def test_reverse_complement():
    assert reverse_complement("AACcN") == "NgGTT"


def test_preserved_model_state_restores_everything_on_error():
    model = torch.nn.Sequential(torch.nn.Conv1d(4, 2, 3), torch.nn.BatchNorm1d(2)).train()
    model[1].eval()
    model.transform = torch.nn.Identity()
    transform = model.transform
    weight = model[0].weight
    with pytest.raises(RuntimeError):
        with preserved_model_state(model):
            model.eval()
            model.to(torch.float64)
            model[0].weight.requires_grad_(False)
            model.transform = torch.nn.ReLU()
            raise RuntimeError("fail")
    assert model.training and model[0].training and not model[1].training
    assert model.transform is transform
    assert model[0].weight is weight and weight.dtype == torch.float32 and weight.requires_grad
    assert model[1].running_mean.dtype == torch.float32


@pytest.mark.parametrize("name", ["missing.fa", "missing.fa.gz", "sub/hg38.fasta", "x.fna"])
def test_missing_fasta_path_is_a_missing_file_with_or_without_genomepy(tmp_path, monkeypatch, name):
    """A path-like genome that does not exist is never handed to genomepy (which would report
    its own FileNotFoundError): the error names genome and the file."""
    import types

    fake = types.ModuleType("genomepy")

    def genome(*a, **k):
        raise FileNotFoundError("could not find it in genome_dir")

    fake.Genome = genome
    monkeypatch.setitem(sys.modules, "genomepy", fake)
    df = pd.DataFrame({"chrom": ["chr1"], "start": [0], "end": [4]})
    path = str(tmp_path / name)
    with pytest.raises(SequenceInputError, match="genome: FASTA file .* does not exist"):
        intervals_to_strings(df, path)

"""Tests of the after-the-run tools: basewise.summarize, the summarize / export-bigwig commands
and the modisco region index, on small results files written by basewise.runs."""

import argparse
import gzip
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

h5py = pytest.importorskip("h5py")

from basewise import summarize as S  # noqa: E402
from basewise._cli_tools import register  # noqa: E402
from basewise.modisco import export_modisco_from_results, load_modisco_input  # noqa: E402
from basewise.plot import ism_logo_heights  # noqa: E402
from basewise.results import open_results  # noqa: E402
from basewise.runs import RunError, attribute_regions, ism_regions  # noqa: E402
from basewise.sequence import reverse_complement  # noqa: E402

MOTIF = "GATTACAG"  # not its own reverse complement
KEY = 2  # the motif position whose mismatch costs most
L = 40
START_POS, END_POS = 5, 35
COMP = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}


class MotifModel(torch.nn.Module):
    """(B, 4, L) -> (B, 2, 1): task 0 = best match of MOTIF (max over positions of a linear
    filter, +1 per matching base, -1 per mismatch, +5 at the KEY base), task 1 = a mean filter."""

    def __init__(self, flat=False):
        super().__init__()
        w = -torch.ones(1, 4, len(MOTIF))
        for i, b in enumerate(MOTIF):
            w[0, "ACGT".index(b), i] = 5.0 if i == KEY else 1.0
        self.motif = torch.nn.Conv1d(4, 1, len(MOTIF), bias=False)
        self.motif.weight.data = w
        torch.manual_seed(1)
        self.other = torch.nn.Conv1d(4, 1, 3)
        self.flat = flat

    def forward(self, x):
        a = self.motif(x).amax(dim=2, keepdim=True)  # (B, 1, 1)
        b = self.other(x).mean(dim=2, keepdim=True)  # (B, 1, 1)
        out = torch.cat([a, b], dim=1)  # (B, 2, 1)
        return out[:, :1, 0] if self.flat else out  # attributions: (B, 1)


# regions: 0 and 1 overlap (chr1 140-170), 2 and 3 overlap (chr2 90-120), 0 and 4 on "-"
GENOME_MOTIF_MINUS = ("chr1", 150)  # reverse_complement(MOTIF) written at chr1:150-158
GENOME_MOTIF_PLUS = ("chr2", 100)  # MOTIF written at chr2:100-108
BED = pd.DataFrame({
    "chrom": ["chr1", "chr1", "chr2", "chr2", "chr1"],
    "start": [130, 140, 80, 90, 300],
    "end": [170, 180, 120, 130, 340],
    "name": ["minus_motif", "plus_overlap", "plus_motif", "dot_overlap", "minus_plain"],
    "strand": ["-", "+", "+", ".", "-"],
})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("summ")
    rng = np.random.default_rng(7)
    chroms = {}
    for c, n in {"chr1": 400, "chr2": 300, "chrM": 50}.items():
        # background without any near-match of the motif: only A/C so GATTACAG scores low
        chroms[c] = list("".join(rng.choice(list("AC"), n)))
    c, p = GENOME_MOTIF_MINUS
    chroms[c][p:p + len(MOTIF)] = reverse_complement(MOTIF)
    c, p = GENOME_MOTIF_PLUS
    chroms[c][p:p + len(MOTIF)] = MOTIF
    chroms["chr1"][320] = "N"  # an N inside region 4
    genome = {c: "".join(s) for c, s in chroms.items()}
    with open(d / "genome.fa", "w") as fh:
        for c, s in genome.items():
            fh.write(f">{c}\n" + "\n".join(s[i:i + 60] for i in range(0, len(s), 60)) + "\n")
    model = MotifModel().eval()
    kw = dict(progress=False, chunk_size=2)
    ism_regions(model, BED, str(d / "genome.fa"), str(d / "ism.h5"), compare_func="subtract",
                start_pos=START_POS, end_pos=END_POS, engine="full", **kw).close()
    ism_regions(model, BED, str(d / "genome.fa"), str(d / "raw.h5"), start_pos=START_POS, end_pos=END_POS,
                engine="full", **kw).close()
    attribute_regions(MotifModel(flat=True).eval(), BED, str(d / "genome.fa"), str(d / "attr.h5"),
                      method="saliency", **kw).close()
    # an unfinished copy: regions 1 and 3 not done
    shutil.copy(d / "ism.h5", d / "partial.h5")
    with h5py.File(d / "partial.h5", "r+") as f:
        f["done"][[1, 3]] = 0
    seqs = [genome["chr1"][10:50], genome["chr2"][5:45]]
    (d / "seqs.fa").write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    ism_regions(model, fasta=str(d / "seqs.fa"), output=str(d / "fasta.h5"), engine="full", **kw).close()
    return {"dir": d, "genome": genome}


# ---------------------------------------------------------------------------------------------
# independent reference computations (plain loops over the stored arrays)
# ---------------------------------------------------------------------------------------------
def _ref_ism_scores(path, score, task=0, bin=0, raw=False):
    """{region: {genome_pos: (score, ref base on +)}} from plain loops."""
    out = {}
    with open_results(path) as r:
        scores, seqs, regions = r.scores[()], r.sequences[()], r.regions
        for i in range(len(r)):
            if not r.done[i]:
                continue
            reg = regions.iloc[i]
            base_val = None
            for p in range(scores.shape[1]):
                j = START_POS + p
                if seqs[i, j] < 4:
                    base_val = scores[i, p, seqs[i, j], task, bin]
                    break
            d = {}
            for p in range(scores.shape[1]):
                j = START_POS + p
                ref = int(seqs[i, j])
                vals = scores[i, p, :, task, bin].astype(np.float64)
                eff = vals - (base_val if raw else 0.0)
                alts = [b for b in range(4) if b != ref]
                if score == "mean_abs":
                    v = np.mean([abs(eff[b]) for b in alts])
                elif score == "max_abs":
                    v = max(abs(eff[b]) for b in alts)
                else:  # logo
                    v = 0.0 if ref == 4 else -vals.mean()
                g = reg.end - 1 - j if reg.strand == "-" else reg.start + j
                letter = "ACGTN"[ref]
                d[int(g)] = (v, COMP[letter] if reg.strand == "-" else letter)
            out[i] = d
    return out


def _ref_attr_scores(path, score):
    out = {}
    with open_results(path) as r:
        scores, seqs, regions = r.scores[()], r.sequences[()], r.regions
        for i in range(len(r)):
            reg = regions.iloc[i]
            d = {}
            for j in range(seqs.shape[1]):
                col = scores[i, :, j].astype(np.float64)
                onehot = np.eye(5)[seqs[i, j]][:4]
                v = {"mean_abs": np.abs(col).mean(), "max_abs": np.abs(col).max(),
                     "attr_x_input": float((col * onehot).sum())}[score]
                g = reg.end - 1 - j if reg.strand == "-" else reg.start + j
                d[int(g)] = (v, None)
            out[i] = d
    return out


# ---------------------------------------------------------------------------------------------
# position scores
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", ["mean_abs", "max_abs", "logo"])
def test_ism_position_scores_equal_plain_loops(files, score):
    path = files["dir"] / "ism.h5"
    ps = S.position_scores(path, score)
    want = _ref_ism_scores(path, score)
    assert ps.values.shape == (5, END_POS - START_POS) and ps.skipped == 0 and ps.kind == "ism"
    assert ps.index.tolist() == [0, 1, 2, 3, 4]
    g, refp = ps.genome_positions(), ps.ref_plus()
    for row, i in enumerate(ps.index):
        for p in range(ps.values.shape[1]):
            v, letter = want[i][int(g[row, p])]
            assert ps.values[row, p] == pytest.approx(v, rel=1e-9, abs=1e-12)
            assert "ACGTN"[refp[row, p]] == letter


def test_reference_base_on_plus_strand_is_the_genome(files):
    ps = S.position_scores(files["dir"] / "ism.h5")
    g, refp = ps.genome_positions(), ps.ref_plus()
    for row in range(len(ps.index)):
        chrom = ps.regions.chrom[row]
        assert "".join("ACGTN"[b] for b in refp[row]) == "".join(files["genome"][chrom][x] for x in g[row])


def test_logo_is_the_plot_definition(files):
    with open_results(files["dir"] / "ism.h5") as r:
        ps = S.position_scores(r, "logo")
        for i in range(len(r)):
            heights = ism_logo_heights(r.ism_dataframe(i)).sum(axis=1).to_numpy()  # (P,)
            np.testing.assert_allclose(ps.values[i], heights, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("score", ["mean_abs", "max_abs"])
def test_raw_predictions_give_the_same_effects_as_subtract(files, score):
    """Effects of a run without compare_func are measured from the reference-base entry."""
    sub = S.position_scores(files["dir"] / "ism.h5", score)
    raw = S.position_scores(files["dir"] / "raw.h5", score)
    np.testing.assert_allclose(raw.values, sub.values, rtol=0, atol=1e-5)
    want = _ref_ism_scores(files["dir"] / "raw.h5", score, raw=True)
    g = raw.genome_positions()
    assert raw.values[0] == pytest.approx([want[0][int(x)][0] for x in g[0]], rel=1e-9)


def test_n_reference_uses_all_four_substitutions_and_logo_zero(files):
    ps = S.position_scores(files["dir"] / "ism.h5", "mean_abs")
    row = 4  # chr1:300-340 "-", the N at chr1:320
    p = int(np.flatnonzero(ps.genome_positions()[row] == 320)[0])
    assert ps.ref[row, p] == 4
    with open_results(files["dir"] / "ism.h5") as r:
        vals = r.scores[4, p, :, 0, 0].astype(np.float64)
    assert ps.values[row, p] == pytest.approx(np.abs(vals).mean())
    assert S.position_scores(files["dir"] / "ism.h5", "logo").values[row, p] == 0


@pytest.mark.parametrize("score", ["mean_abs", "max_abs", "attr_x_input"])
def test_attribution_position_scores_equal_plain_loops(files, score):
    path = files["dir"] / "attr.h5"
    ps = S.position_scores(path, score)
    want = _ref_attr_scores(path, score)
    assert ps.values.shape == (5, L) and ps.offset == 0
    g = ps.genome_positions()
    for row, i in enumerate(ps.index):
        got = ps.values[row]
        assert got == pytest.approx([want[i][int(x)][0] for x in g[row]], rel=1e-9, abs=1e-12)


def test_default_scores_by_kind(files):
    assert S.position_scores(files["dir"] / "ism.h5").score == "mean_abs"
    assert S.position_scores(files["dir"] / "attr.h5").score == "attr_x_input"


def test_task_selection_and_range_errors(files):
    path = files["dir"] / "ism.h5"
    t1 = S.position_scores(path, "max_abs", task=1)
    want = _ref_ism_scores(path, "max_abs", task=1)
    g = t1.genome_positions()
    assert t1.values[2] == pytest.approx([want[2][int(x)][0] for x in g[2]], rel=1e-9, abs=1e-12)
    assert not np.allclose(t1.values, S.position_scores(path, "max_abs").values)
    with pytest.raises(ValueError, match=r"task: the results have 2 tasks; expected an integer from 0 to 1, got 2"):
        S.position_scores(path, task=2)
    with pytest.raises(ValueError, match=r"bin: the results have 1 bin; expected an integer from 0, got 1"):
        S.position_scores(path, bin=1)
    with pytest.raises(ValueError, match=r"score: expected one of"):
        S.position_scores(path, "mean")
    with pytest.raises(ValueError, match=r"score: 'attr_x_input' is for attribution results"):
        S.position_scores(path, "attr_x_input")
    with pytest.raises(ValueError, match=r"score: 'logo' is the ISM logo height"):
        S.position_scores(files["dir"] / "attr.h5", "logo")


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def test_minus_strand_top_position_is_the_planted_key_base(files):
    """The '-' region holds reverse_complement(MOTIF) on the genome: its top position is the
    genome coordinate of the KEY base, read backwards from the motif's genome end."""
    c, p = GENOME_MOTIF_MINUS
    key_genome = p + len(MOTIF) - 1 - KEY
    top = S.top_positions(files["dir"] / "ism.h5", n=3)
    first = top[(top.region == 0) & (top["rank"] == 1)].iloc[0]
    assert (first.chrom, first.pos, first.strand) == (c, key_genome, "-")
    assert first.ref == COMP[MOTIF[KEY]] == files["genome"][c][key_genome]
    assert first.seq_pos == 169 - key_genome
    c2, p2 = GENOME_MOTIF_PLUS
    first = top[(top.region == 2) & (top["rank"] == 1)].iloc[0]
    assert (first.chrom, first.pos, first.ref) == (c2, p2 + KEY, MOTIF[KEY])
    # the attribution (saliency x input) sees the same base
    att = S.top_positions(files["dir"] / "attr.h5", n=1)
    assert att.set_index("region").loc[0, "pos"] == key_genome


def test_top_positions_per_region_and_overall(files):
    path = files["dir"] / "ism.h5"
    ps = S.position_scores(path, "max_abs")
    top = S.top_positions(path, n=4, score="max_abs")
    assert list(top.columns) == ["chrom", "pos", "ref", "score", "rank", "region", "name", "strand", "seq_pos"]
    assert len(top) == 5 * 4 and top.attrs["score"] == "max_abs" and top.attrs["skipped"] == 0
    g = ps.genome_positions()
    for row, i in enumerate(ps.index):
        sub = top[top.region == i]
        order = np.argsort(-ps.values[row], kind="stable")[:4]
        assert sub["rank"].tolist() == [1, 2, 3, 4]
        assert sub.pos.tolist() == g[row, order].tolist()
        np.testing.assert_array_equal(sub.score.to_numpy(), ps.values[row, order])
        assert (sub.name == BED.name[i]).all()
    overall = S.top_positions(path, n=6, score="max_abs", per_region=False)
    flat = np.sort(ps.values.reshape(-1))[::-1][:6]
    np.testing.assert_array_equal(overall.score.to_numpy(), flat)
    assert overall["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        S.top_positions(path, n=0)


def test_region_summary_equals_numpy(files):
    path = files["dir"] / "ism.h5"
    df = S.region_summary(path, "max_abs")
    ps = S.position_scores(path, "max_abs")
    assert list(df.columns) == ["region", "chrom", "start", "end", "strand", "name", "max", "max_pos",
                                "max_ref", "sum", "mean"]
    assert df.region.tolist() == [0, 1, 2, 3, 4] and df.name.tolist() == BED.name.tolist()
    np.testing.assert_array_equal(df["max"].to_numpy(), ps.values.max(axis=1))
    np.testing.assert_allclose(df["sum"].to_numpy(), ps.values.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(df["mean"].to_numpy(), ps.values.mean(axis=1), rtol=1e-12)
    g = ps.genome_positions()
    assert df.max_pos.tolist() == [int(g[i, np.argmax(ps.values[i])]) for i in range(5)]
    for _, row in df.iterrows():
        assert row.max_ref == files["genome"][row.chrom][row.max_pos]
    assert df.attrs == {"score": "max_abs", "skipped": 0, "kind": "ism"}


def test_unfinished_regions_are_skipped_and_counted(files):
    path = files["dir"] / "partial.h5"
    df = S.region_summary(path)
    assert df.region.tolist() == [0, 2, 4] and df.attrs["skipped"] == 2
    full = S.region_summary(files["dir"] / "ism.h5")
    np.testing.assert_array_equal(df["max"].to_numpy(), full["max"].to_numpy()[[0, 2, 4]])
    assert set(S.top_positions(path, n=2).region) == {0, 2, 4}
    ps = S.position_scores(path, regions=[1, 2, 3])
    assert ps.index.tolist() == [2] and ps.skipped == 2
    with pytest.raises(ValueError, match="no finished regions among those selected"):
        S.position_scores(path, regions=[1, 3])
    with pytest.raises(ValueError, match=r"regions: region indices must lie in \[0, 5\)"):
        S.position_scores(path, regions=[7])


def test_to_pandas_long_table(files):
    path = files["dir"] / "attr.h5"
    df = S.to_pandas(path, "attr_x_input", regions=[0, 2])
    ps = S.position_scores(path, "attr_x_input", regions=[0, 2])
    assert len(df) == 2 * L
    np.testing.assert_array_equal(df.score.to_numpy(), ps.values.reshape(-1))
    np.testing.assert_array_equal(df.pos.to_numpy(), ps.genome_positions().reshape(-1))
    assert df.pos.iloc[0] == 169 and df.pos.iloc[L - 1] == 130  # "-": descending genome coordinates
    assert "".join(df.ref.iloc[:L])[::-1] == files["genome"]["chr1"][130:170]


def test_to_xarray(files):
    xr = pytest.importorskip("xarray")
    ds = S.to_xarray(files["dir"] / "partial.h5")
    assert isinstance(ds, xr.Dataset)
    assert ds.scores.dims == ("region", "position", "base", "task", "bin")
    assert ds.region.values.tolist() == [0, 2, 4] and ds.attrs["skipped"] == 2
    assert ds.position.values.tolist() == list(range(START_POS, END_POS))
    assert ds.chrom.values.tolist() == ["chr1", "chr2", "chr1"]
    assert ds.region_name.values.tolist() == ["minus_motif", "plus_motif", "minus_plain"]
    with open_results(files["dir"] / "ism.h5") as r:
        np.testing.assert_array_equal(ds.scores.sel(region=2).values, r.scores[2])
        np.testing.assert_array_equal(ds.sequence.sel(region=4).values, r.sequences[4])
    a = S.to_xarray(files["dir"] / "attr.h5")
    assert a.scores.dims == ("region", "base", "position") and a.base.values.tolist() == list("ACGT")


def test_to_xarray_without_xarray(files, monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "xarray":
            raise ImportError("no xarray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="pip install xarray"):
        S.to_xarray(files["dir"] / "ism.h5")


# ---------------------------------------------------------------------------------------------
# bedGraph / bigWig
# ---------------------------------------------------------------------------------------------
def _expected_track(want, merge):
    """{(chrom, pos): merged value} from per-region {pos: (value, _)} dicts."""
    acc = {}
    for i, d in want.items():
        for g, (v, _) in d.items():
            acc.setdefault((BED.chrom[i], g), []).append(v)
    return {k: (np.mean(v) if merge == "mean" else np.max(v)) for k, v in acc.items()}


def _read_bedgraph(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    lines = [line.split("\t") for line in opener(path, "rt").read().splitlines()]
    got = {}
    for c, s, e, v in lines:
        for g in range(int(s), int(e)):
            assert (c, g) not in got
            got[(c, g)] = float(v)
    return lines, got


@pytest.mark.parametrize("merge", ["mean", "max"])
def test_bedgraph_merges_overlapping_regions(files, tmp_path, merge):
    path = files["dir"] / "ism.h5"
    out = tmp_path / "t.bedGraph"
    s = S.to_bedgraph(path, out, score="mean_abs", merge=merge)
    want = _expected_track(_ref_ism_scores(path, "mean_abs"), merge)
    lines, got = _read_bedgraph(out)
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9)
    # sorted by chromosome then start (bedGraphToBigWig's order); runs of equal values merged
    keys = [(c, int(st)) for c, st, _, _ in lines]
    assert keys == sorted(keys)
    assert s["intervals"] == len(lines) < len(want) and s["positions"] == len(want) and s["chroms"] == 2
    # the overlaps (chr1:140-170, chr2:90-120) are where mean and max differ
    other = _expected_track(_ref_ism_scores(path, "mean_abs"), "max" if merge == "mean" else "mean")
    differ = {k for k in want if not np.isclose(want[k], other[k], rtol=1e-6, atol=0)}
    assert differ and all((c == "chr1" and 140 <= g < 170) or (c == "chr2" and 90 <= g < 120) for c, g in differ)


def test_bedgraph_gz_and_attribution(files, tmp_path):
    path = files["dir"] / "attr.h5"
    S.to_bedgraph(path, tmp_path / "a.bedGraph.gz")
    want = _expected_track(_ref_attr_scores(path, "attr_x_input"), "mean")
    _, got = _read_bedgraph(tmp_path / "a.bedGraph.gz")
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9)


def test_tracks_refuse_sequences_without_genome_coordinates(files, tmp_path):
    with pytest.raises(ValueError, match=r"records of a FASTA of sequences .* no genome coordinates "
                                         r"\(chrom, start, end\).*--bed FILE --genome FASTA"):
        S.to_bedgraph(files["dir"] / "fasta.h5", tmp_path / "x.bedGraph")
    # the tables still work, in sequence coordinates
    assert S.region_summary(files["dir"] / "fasta.h5").chrom.tolist() == ["s0", "s1"]
    with pytest.raises(ValueError, match="merge: expected one of"):
        S.to_bedgraph(files["dir"] / "ism.h5", tmp_path / "x.bedGraph", merge="sum")


def test_chrom_sizes_sources_and_checks(files, tmp_path):
    sizes = {"chr1": 400, "chr2": 300, "chrM": 50}
    assert S.read_chrom_sizes(files["dir"] / "genome.fa") == sizes
    assert S.read_chrom_sizes(str(files["dir"] / "genome.fa") + ".fai") == sizes
    (tmp_path / "g.sizes").write_text("chr1\t400\nchr2\t300\n")
    assert S.read_chrom_sizes(tmp_path / "g.sizes") == {"chr1": 400, "chr2": 300}
    (tmp_path / "bad.sizes").write_text("chr1 four\n")
    with pytest.raises(ValueError, match=r"bad.sizes:1: expected 'chrom<TAB>size'"):
        S.read_chrom_sizes(tmp_path / "bad.sizes")
    with pytest.raises(ValueError, match=r"chrom_sizes: chromosome 'chr2' of the regions is not in"):
        S.to_bedgraph(files["dir"] / "ism.h5", tmp_path / "x.bg", chrom_sizes={"chr1": 400})
    with pytest.raises(ValueError, match=r"chrom_sizes: region 4 \(minus_plain\) has a base at chr1:334, past the "
                                         r"size of chr1 \(200\); are these the chromosome sizes of the run's genome\?"):
        S.to_bedgraph(files["dir"] / "ism.h5", tmp_path / "x.bg", chrom_sizes={"chr1": 200, "chr2": 300})


@pytest.mark.parametrize("genome", [True, False])
def test_bigwig_reads_back(files, tmp_path, genome):
    pyBigWig = pytest.importorskip("pyBigWig")
    path = files["dir"] / "ism.h5"
    out = tmp_path / "t.bw"
    s = S.export_bigwig(path, out, score="max_abs", merge="max",
                        chrom_sizes=files["dir"] / "genome.fa" if genome else None)
    want = _expected_track(_ref_ism_scores(path, "max_abs"), "max")
    bw = pyBigWig.open(str(out))
    try:
        assert bw.isBigWig()
        assert bw.chroms() == ({"chr1": 400, "chr2": 300, "chrM": 50} if genome else {"chr1": 340, "chr2": 130})
        for c in ("chr1", "chr2"):
            vals = np.array(bw.values(c, 0, bw.chroms(c)))
            for g, v in enumerate(vals):
                if (c, g) in want:
                    assert v == pytest.approx(want[(c, g)], rel=1e-6, abs=1e-7)
                else:
                    assert np.isnan(v)
    finally:
        bw.close()
    assert s["positions"] == len(want) and s["chrom_sizes_from"] == ("regions" if not genome else
                                                                       str(files["dir"] / "genome.fa"))


# ---------------------------------------------------------------------------------------------
# modisco region index
# ---------------------------------------------------------------------------------------------
def test_modisco_region_index(files, tmp_path):
    path = files["dir"] / "attr.h5"
    s, a = export_modisco_from_results(path, tmp_path / "m", allow_non_hypothetical=True, chunk_size=2)
    index = pd.read_csv(tmp_path / "m" / "regions.tsv", sep="\t")
    assert list(index.columns) == ["row", "region", "chrom", "start", "end", "strand", "name"]
    assert index.row.tolist() == index.region.tolist() == [0, 1, 2, 3, 4]
    for col in ("chrom", "start", "end", "strand", "name"):
        assert index[col].tolist() == BED[col].tolist()
    # the row's sequence is the region's (reverse-complemented on "-") genome sequence
    ohe = load_modisco_input(s)
    for _, row in index.iterrows():
        x = ohe[row.row]  # (4, L); N is all zeros
        seq = "".join("ACGT"[b] if x[:, j].any() else "N" for j, b in enumerate(x.argmax(axis=0)))
        plus = files["genome"][row.chrom][row.start:row.end]
        assert seq == (reverse_complement(plus) if row.strand == "-" else plus)
    # an unfinished run: rows are the done regions, in order
    part = tmp_path / "part.h5"
    shutil.copy(path, part)
    with h5py.File(part, "r+") as f:
        f["done"][[0, 3]] = 0
    export_modisco_from_results(part, tmp_path / "p", allow_non_hypothetical=True, allow_incomplete=True,
                                index_name="idx.tsv")
    index = pd.read_csv(tmp_path / "p" / "idx.tsv", sep="\t")
    assert index.row.tolist() == [0, 1, 2] and index.region.tolist() == [1, 2, 4]
    assert index.name.tolist() == BED.name[[1, 2, 4]].tolist()
    assert len(load_modisco_input(tmp_path / "p" / "shap.npz")) == 3


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def _cli(argv):
    """Parse and run like basewise.cli.main (RunError -> exit code 2, one line)."""
    parser = argparse.ArgumentParser(prog="basewise")
    commands = register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return commands[args.command](args)


def test_cli_summarize_regions_and_positions(files, tmp_path, capsys):
    path = files["dir"] / "ism.h5"
    assert _cli(["summarize", path, "-o", tmp_path / "r.tsv"]) == 0
    err = capsys.readouterr().err
    assert "5 regions (score mean_abs, task 0 of 2, bin 0 of 1 (--task/--bin))" in err
    got = pd.read_csv(tmp_path / "r.tsv", sep="\t")
    want = S.region_summary(path)
    assert got.region.tolist() == want.region.tolist() and got.max_pos.tolist() == want.max_pos.tolist()
    np.testing.assert_allclose(got["max"], want["max"], rtol=1e-6)

    assert _cli(["summarize", path, "--by", "position", "--top", "2", "--score", "max_abs", "--task", "1",
                 "-o", tmp_path / "p.csv"]) == 0
    got = pd.read_csv(tmp_path / "p.csv")
    want = S.top_positions(path, n=2, score="max_abs", task=1)
    assert got.pos.tolist() == want.pos.tolist() and len(got) == 10
    np.testing.assert_allclose(got.score, want.score, rtol=1e-6)

    capsys.readouterr()
    assert _cli(["summarize", files["dir"] / "partial.h5", "--by", "region", "--top", "1"]) == 0
    out, err = capsys.readouterr()
    table = [line.split("\t") for line in out.splitlines()]
    assert table[0][:2] == ["region", "chrom"] and len(table) == 2 and table[1][0] == "0"  # the motif region
    assert "2 of 5 regions are unfinished and were skipped" in err

    assert _cli(["summarize", path, "--by", "position", "--top", "3", "--overall"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 4
    assert _cli(["summarize", files["dir"] / "attr.h5", "--by", "position", "--top", "all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 5 * L


@pytest.mark.parametrize("argv, message", [
    (["summarize", "{d}/missing.h5"], "results: file '{d}/missing.h5' does not exist"),
    (["summarize", "{d}/genome.fa"], "results: cannot read '{d}/genome.fa'"),
    (["summarize", "{d}/ism.h5", "--task", "5"], "--task: the results have 2 tasks; expected an integer from 0 to 1"),
    (["summarize", "{d}/ism.h5", "--bin", "3"], "--bin: the results have 1 bin"),
    (["summarize", "{d}/ism.h5", "--score", "attr_x_input"], "--score: 'attr_x_input' is for attribution results"),
    (["summarize", "{d}/attr.h5", "--score", "logo"], "--score: 'logo' is the ISM logo height"),
    (["summarize", "{d}/ism.h5", "--overall"], "--overall: ranks positions over all regions"),
    (["export-bigwig", "{d}/ism.h5", "-o", "{t}/x.txt"], "-o/--output: '{t}/x.txt': expected a .bw"),
    (["export-bigwig", "{d}/fasta.h5", "-o", "{t}/x.bedGraph"], "results: the regions of"),
    (["export-bigwig", "{d}/ism.h5", "-o", "{t}/x.bedGraph", "--genome", "{d}/nope.fa"],
     "--genome: file '{d}/nope.fa' does not exist"),
    (["export-bigwig", "{d}/ism.h5", "-o", "{t}/x.bg", "--genome", "{t}/small.sizes"],
     "--genome: region 0 (minus_motif) has a base at chr1:164, past the size of chr1 (100)"),
])
def test_cli_errors_are_one_line_run_errors(files, tmp_path, argv, message):
    (tmp_path / "small.sizes").write_text("chr1\t100\nchr2\t300\n")
    fill = dict(d=files["dir"], t=tmp_path)
    with pytest.raises(RunError) as e:
        _cli([a.format(**fill) for a in argv])
    text = str(e.value)
    assert message.format(**fill) in text and "\n" not in text


def test_cli_export_bedgraph_and_bigwig(files, tmp_path, capsys):
    path = files["dir"] / "attr.h5"
    assert _cli(["export-bigwig", path, "-o", tmp_path / "a.bedGraph", "--score", "mean_abs", "--merge", "max"]) == 0
    err = capsys.readouterr().err
    assert "wrote" in err and "score mean_abs, merge max" in err
    S.to_bedgraph(path, tmp_path / "b.bedGraph", score="mean_abs", merge="max")
    assert (tmp_path / "a.bedGraph").read_text() == (tmp_path / "b.bedGraph").read_text()
    try:
        import pyBigWig
    except ImportError:
        with pytest.raises(RunError, match=r"-o/--output: writing a bigWig needs pyBigWig: pip install"):
            _cli(["export-bigwig", path, "-o", tmp_path / "a.bw"])
        return
    assert _cli(["export-bigwig", path, "-o", tmp_path / "a.bw"]) == 0
    err = capsys.readouterr().err
    assert f"pass --genome {files['dir'] / 'genome.fa'}" in err  # the run's genome, as a hint
    assert _cli(["export-bigwig", path, "-o", tmp_path / "g.bigWig", "--genome", files["dir"] / "genome.fa"]) == 0
    assert "note" not in capsys.readouterr().err
    bw = pyBigWig.open(str(tmp_path / "g.bigWig"))
    assert bw.chroms("chrM") == 50
    bw.close()


def test_cli_bigwig_without_pybigwig(files, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "pyBigWig":
            raise ImportError("no pyBigWig")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(RunError, match=r"-o/--output: writing a bigWig needs pyBigWig: pip install "
                                       r"'basewise\[bigwig\]'"):
        _cli(["export-bigwig", files["dir"] / "ism.h5", "-o", tmp_path / "a.bw"])
    assert not (tmp_path / "a.bw").exists()


def test_through_basewise_cli_main(files, tmp_path, capsys):
    from basewise.cli import main

    d = files["dir"]
    assert main(["summarize", str(d / "ism.h5"), "--by", "position", "--top", "1"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 + 5 and "basewise summarize: 5 positions" in err
    assert main(["export-bigwig", str(d / "ism.h5"), "-o", str(tmp_path / "t.bedGraph")]) == 0
    assert (tmp_path / "t.bedGraph").read_text().startswith("chr1\t")
    capsys.readouterr()
    assert main(["summarize", str(d / "missing.h5")]) == 2
    err = capsys.readouterr().err
    assert err == f"basewise summarize: error: results: file '{d / 'missing.h5'}' does not exist\n"
    assert main(["export-bigwig", str(d / "ism.h5"), "-o", str(tmp_path / "t.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("basewise export-bigwig: error: -o/--output:") and err.count("\n") == 1


def test_from_a_real_process(files, tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "basewise", "summarize", str(files["dir"] / "attr.h5"), "--top", "2"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].split("\t")[:3] == ["region", "chrom", "start"] and len(p.stdout.splitlines()) == 3
    p = subprocess.run([sys.executable, "-m", "basewise", "summarize", str(files["dir"] / "attr.h5"), "--score", "logo"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("basewise summarize: error: --score: 'logo'")


def test_tracks_drop_positions_of_regions_padded_past_chromosome_ends(files, tmp_path):
    """--on-bad-interval pad: N past a chromosome's ends; never a negative position in a track,
    and nothing past the end once the chromosome sizes are known."""
    d = files["dir"]
    bed = pd.DataFrame({"chrom": ["chr2", "chr2"], "start": [0, 290], "end": [10, 300], "strand": ["+", "-"]})
    out = tmp_path / "pad.h5"
    ism_regions(MotifModel().eval(), bed, str(d / "genome.fa"), str(out), width=L, on_bad_interval="pad",
                compare_func="subtract", engine="full", progress=False).close()
    with open_results(out) as r:
        assert r.regions.start.tolist() == [-15, 275] and r.regions.end.tolist() == [25, 315]
    S.to_bedgraph(out, tmp_path / "a.bg")
    _, got = _read_bedgraph(tmp_path / "a.bg")
    assert sorted(g for _, g in got) == list(range(0, 25)) + list(range(275, 315))
    S.to_bedgraph(out, tmp_path / "b.bg", chrom_sizes=d / "genome.fa")
    _, got_sized = _read_bedgraph(tmp_path / "b.bg")
    assert sorted(g for _, g in got_sized) == list(range(0, 25)) + list(range(275, 300))
    assert all(got_sized[k] == got[k] for k in got_sized)
    # the tables keep the padded positions (reference N)
    df = S.to_pandas(out)
    assert df.pos.min() == -15 and (df[(df.pos < 0) | (df.pos >= 300)].ref == "N").all()

"""The command line with biologists' inputs: IUPAC letters, narrowPeak summits, bad intervals,
stale FASTA indexes, errors that name the option at fault, output-size estimates, NaN counts,
and reading a results file while a run writes it (the CLI issue's defects and additions)."""

import gzip
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from basewise import ISM_predict, get_attributions  # noqa: E402
from basewise.cli import main  # noqa: E402
from basewise.results import open_results  # noqa: E402
from basewise.runs import RunError, ism_regions  # noqa: E402
from basewise.sequence import reverse_complement  # noqa: E402

L = 20
MODEL_SRC = textwrap.dedent("""
    import torch

    class Tiny(torch.nn.Module):
        # (B, 4, L) -> (B, 2, L): two tasks, one output bin per position
        def __init__(self, sign=1.0):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv1d(4, 3, 5, padding=2)
            self.act = torch.nn.ReLU()
            self.head = torch.nn.Conv1d(3, 2, 1)
            self.sign = sign

        def forward(self, x):
            return self.sign * self.head(self.act(self.conv(x)))

    def build():
        return Tiny()

    def build_named():
        m = Tiny()
        m.data_params = {"tasks": {"name": ["DNase", "H3K27ac"]}}
        return m

    class Picky(Tiny):
        def forward(self, x):
            if bool((x[:, :, 0].sum(1) == 0).any()):
                raise ValueError("cannot score a sequence that starts with N")
            return super().forward(x)

    def build_picky():
        return Picky()

    def build_centred():
        # a linear model with outputs of both signs: log2FC gives NaN where mutant and reference
        # predictions differ in sign
        torch.manual_seed(1)
        return torch.nn.Conv1d(4, 2, 3, padding=1)
""")


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_inputs")
    (d / "inputs_models.py").write_text(MODEL_SRC)
    rng = np.random.default_rng(3)
    chr1 = list("".join(rng.choice(list("ACGT"), 400)))
    chr1[100:104] = "NNNN"
    chr1[250] = "M"  # an IUPAC code inside region "iupac" below
    (d / "genome.fa").write_text(">chr1\n" + "".join(chr1) + "\n>chr2\n" + "".join(rng.choice(list("ACGT"), 90)) + "\n")
    return d


@pytest.fixture(autouse=True)
def _cwd(d, monkeypatch):
    monkeypatch.chdir(d)
    monkeypatch.syspath_prepend(str(d))


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def genome_seq(d, chrom, start, end):
    import pyfaidx

    return str(pyfaidx.Fasta(str(d / "genome.fa"))[chrom][start:end]).upper()


def model():
    import inputs_models

    return inputs_models.build().eval()


def bed(d, name, lines, gz=False):
    path = d / name
    text = "\n".join("\t".join(map(str, line)) for line in lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write("track name=peaks\n" + text)
    else:
        path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# defect 3: letters other than ACGTN
# ---------------------------------------------------------------------------------------------
def test_iupac_letter_is_reported_before_the_run_with_region_and_offset(d, tmp_path, capsys):
    # the bad region is the last one: the whole set is checked before the output file exists
    regions = [("chr1", 10 + 10 * i, 30 + 10 * i, f"ok{i}", 0, "+") for i in range(5)]
    regions.append(("chr1", 240, 260, "iupac", 0, "-"))
    path = bed(d, "iupac.bed", regions)
    out = tmp_path / "o.h5"
    rc, _, err = run(["ism", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "-o", out, "-q"],
                     capsys)
    assert rc == 2
    line = err.strip()
    assert "\n" not in line
    assert "'iupac'" in line and "chr1:240-260" in line and "'M'" in line and "offset 10" in line
    assert "chr1:250" in line and "--iupac n" in line
    assert not out.exists()


def test_iupac_n_reads_them_as_n(d, tmp_path, capsys):
    path = bed(d, "iupac2.bed", [("chr1", 240, 260, "iupac", 0, "-"), ("chr1", 95, 115, "withN", 0, "+")])
    out = tmp_path / "o.h5"
    rc, _, err = run(["ism", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "-o", out,
                      "-q", "--iupac", "n", "--engine", "full"], capsys)
    assert rc == 0, err
    seqs = [reverse_complement(genome_seq(d, "chr1", 240, 260).replace("M", "N")), genome_seq(d, "chr1", 95, 115)]
    assert "N" in seqs[0] and "M" not in seqs[0]
    want = ISM_predict(seqs, model(), return_df=False, progress=False, engine="full")
    with open_results(out) as r:
        np.testing.assert_array_equal(r.scores[:], want)
        assert r.sequence(0) == seqs[0]


# ---------------------------------------------------------------------------------------------
# defect 5: errors name the option at fault and list the valid choices
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, expect", [
    (["--tasks", "7"], ["--tasks:", "2 tasks", "0 to 1"]),
    (["--positions", "10:50"], ["--positions:", f"{L} output bins", f"0 to {L - 1}"]),
    (["--devices", "0"], ["--devices:", "CUDA"]),
    (["--device", "0"], ["--devices:", "CUDA"]),  # one name for both spellings
])
def test_option_errors_name_the_option(d, tmp_path, capsys, extra, expect):
    if torch.cuda.is_available() and "0" in extra:
        pytest.skip("a GPU is present")
    path = bed(d, "ok.bed", [("chr1", 10, 30, "a", 0, "+"), ("chr2", 5, 25, "b", 0, "-")])
    out = tmp_path / "o.h5"
    rc, _, err = run(["ism", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "-o", out,
                      "-q", *extra], capsys)
    assert rc == 2
    assert "--model" not in err, err
    for e in expect:
        assert e in err, err
    assert not out.exists()


def test_unknown_task_names_list_the_names(d, tmp_path, capsys):
    path = bed(d, "ok.bed", [("chr1", 10, 30, "a", 0, "+")])
    rc, _, err = run(["ism", "-m", "inputs_models:build_named", "--bed", path, "--genome", d / "genome.fa", "-o",
                      tmp_path / "o.h5", "-q", "--tasks", "CTCF"], capsys)
    assert rc == 2
    assert "--tasks:" in err and "'CTCF'" in err and "DNase, H3K27ac" in err
    rc, _, err = run(["ism", "-m", "inputs_models:build_named", "--bed", path, "--genome", d / "genome.fa", "-o",
                      tmp_path / "o.h5", "-q", "--tasks", "H3K27ac", "--engine", "full"], capsys)
    assert rc == 0, err


# ---------------------------------------------------------------------------------------------
# defects 6 and 7: attribute's device list, --target TASK[,BIN], method-specific suggestions
# ---------------------------------------------------------------------------------------------
def test_attribute_device_list_is_one_line(d, tmp_path, capsys):
    path = bed(d, "ok.bed", [("chr1", 10, 30, "a", 0, "+")])
    out = tmp_path / "o.h5"
    rc, _, err = run(["attribute", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "-o",
                      out, "-q", "--method", "saliency", "--device", "cpu,cpu", "--target", "0,3"], capsys)
    assert rc == 2 and "--device:" in err and "one device" in err
    assert not out.exists()


def test_target_task_and_bin(d, tmp_path, capsys):
    path = bed(d, "ok.bed", [("chr1", 10, 30, "a", 0, "+"), ("chr2", 5, 25, "b", 0, "-")])
    out = tmp_path / "o.h5"
    argv = ["attribute", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "-o", out, "-q",
            "--method", "saliency"]
    rc, _, err = run(argv, capsys)  # a (2, L) output and no target: the CLI's own options are suggested
    assert rc == 2 and "--target TASK[,BIN]" in err and "prediction_transform" not in err
    rc, _, err = run(argv + ["--target", "1,7"], capsys)
    assert rc == 0, err
    seqs = [genome_seq(d, "chr1", 10, 30), reverse_complement(genome_seq(d, "chr2", 5, 25))]
    want = get_attributions(model(), seqs, method="saliency", target=(1, 7))
    with open_results(out) as r:
        np.testing.assert_allclose(r.scores[:], want, rtol=1e-6, atol=1e-7)
        assert r.arguments["target"] == [1, 7]
    for bad in ("x", "1,2,3", "-1"):
        rc, _, err = run(argv + ["--overwrite", "--target", bad], capsys)
        assert rc == 2 and "--target:" in err


def test_deepshap_on_a_profile_output_suggests_the_cli_options(d, tmp_path, capsys):
    path = bed(d, "ok.bed", [("chr1", 10, 30, "a", 0, "+")])
    out = tmp_path / "o.h5"
    rc, _, err = run(["attribute", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "-o",
                      out, "-q", "--seed", "1"], capsys)
    assert rc == 2 and "--length-aggfunc" in err and "Wrap the model" not in err
    assert not out.exists()
    rc, _, err = run(["attribute", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "-o",
                      out, "-q", "--seed", "1", "--length-aggfunc", "sum", "--target", "1", "--n-shuffles", "2"],
                     capsys)
    assert rc == 0, err


def test_integrated_gradients_n_steps(d, tmp_path, capsys):
    path = bed(d, "ok.bed", [("chr1", 10, 30, "a", 0, "+")])
    out = tmp_path / "o.h5"
    argv = ["attribute", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "-o", out, "-q",
            "--target", "0,4"]
    rc, _, err = run(argv + ["--method", "saliency", "--n-steps", "5"], capsys)
    assert rc == 2 and "--n-steps" in err
    rc, _, err = run(argv + ["--method", "integratedgradients", "--n-steps", "5"], capsys)
    assert rc == 0, err
    want = get_attributions(model(), [genome_seq(d, "chr1", 10, 30)], method="integratedgradients",
                            target=(0, 4), n_steps=5)
    with open_results(out) as r:
        np.testing.assert_allclose(r.scores[:], want, rtol=1e-6, atol=1e-9)


def test_stale_fasta_index_is_rebuilt(d, tmp_path, capsys):
    rng = np.random.default_rng(9)
    g = tmp_path / "g.fa"
    first = "".join(rng.choice(list("ACGT"), 120))
    g.write_text(">chr1\n" + first + "\n")
    path = bed(d, "stale.bed", [("chr1", 10, 30, "a", 0, "+"), ("chr1", 70, 90, "b", 0, "+")])
    rc, _, err = run(["ism", "-m", "inputs_models:build", "--bed", path, "--genome", g, "-o", tmp_path / "a.h5", "-q"],
                     capsys)
    assert rc == 0 and (tmp_path / "g.fa.fai").exists()
    second = "".join(rng.choice(list("ACGT"), 120))
    g.write_text(">chr1\n" + "\n".join(second[i:i + 50] for i in range(0, 120, 50)) + "\n")  # other line width
    old = os.path.getmtime(tmp_path / "g.fa.fai")
    os.utime(g, (old + 5, old + 5))  # the FASTA is newer than its index
    out = tmp_path / "b.h5"
    rc, _, err = run(["ism", "-m", "inputs_models:build", "--bed", path, "--genome", g, "-o", out, "-q",
                      "--engine", "full"], capsys)
    assert rc == 0, err
    want = ISM_predict([second[10:30], second[70:90]], model(), return_df=False, progress=False, engine="full")
    with open_results(out) as r:
        np.testing.assert_array_equal(r.scores[:], want)


# ---------------------------------------------------------------------------------------------
# narrowPeak summits, bad intervals
# ---------------------------------------------------------------------------------------------
def narrowpeak(chrom, start, end, name, summit, strand="."):
    return (chrom, start, end, name, 0, strand, 1.0, 2.0, 3.0, summit)


def test_narrowpeak_gz_centres_on_the_summit(d, tmp_path, capsys):
    peaks = [narrowpeak("chr1", 20, 120, "p1", 70), narrowpeak("chr1", 150, 230, "p2", 5, "-"),
             narrowpeak("chr2", 10, 60, "p3", -1)]  # -1: no summit, the midpoint
    path = bed(d, "peaks.narrowPeak.gz", peaks, gz=True)
    out = tmp_path / "o.h5"
    rc, _, err = run(["ism", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "--width", L,
                      "-o", out, "-q", "--engine", "full"], capsys)
    assert rc == 0, err
    starts = [20 + 70 - L // 2, 150 + 5 - L // 2, (10 + 60) // 2 - L // 2]
    with open_results(out) as r:
        assert r.regions["start"].tolist() == starts
        assert (r.regions["end"] - r.regions["start"]).tolist() == [L] * 3
        assert r.info["inputs"]["center"] == "summit"
    out2 = tmp_path / "mid.h5"
    rc, _, err = run(["ism", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "--width", L,
                      "-o", out2, "-q", "--center", "midpoint"], capsys)
    assert rc == 0, err
    with open_results(out2) as r:
        assert r.regions["start"].tolist() == [70 - L // 2, 190 - L // 2, 35 - L // 2]
    plain = bed(d, "plain.bed", [("chr1", 20, 120, "p1")])
    rc, _, err = run(["ism", "-m", "inputs_models:build", "--bed", plain, "--genome", d / "genome.fa", "--width", L,
                      "-o", tmp_path / "x.h5", "-q", "--center", "summit"], capsys)
    assert rc == 2 and "--center summit" in err


def test_bad_intervals_skip_and_pad(d, tmp_path, capsys):
    path = bed(d, "bad.bed", [("chr1", 10, 30, "a", 0, "+"), ("chr2", 80, 100, "past_end", 0, "+"),
                              ("chrX", 0, 20, "unknown", 0, "+"), ("chr1", 300, 320, "b", 0, "-")])
    common = ["ism", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "-q", "--engine", "full"]
    rc, _, err = run(common + ["-o", tmp_path / "e.h5"], capsys)
    assert rc == 2 and "--on-bad-interval" in err and "chr2" in err and not (tmp_path / "e.h5").exists()

    out = tmp_path / "skip.h5"
    rc, stdout, err = run(common + ["-o", out, "--on-bad-interval", "skip"], capsys)
    assert rc == 0, err
    assert "2 intervals skipped" in stdout
    with open_results(out) as r:
        assert r.regions["name"].tolist() == ["a", "b"]
        assert r.skipped["name"].tolist() == ["past_end", "unknown"]
        assert r.skipped["line"].tolist() == [2, 3]
        assert "past the end of chr2" in r.skipped["reason"][0] and "unknown chromosome" in r.skipped["reason"][1]

    out = tmp_path / "pad.h5"
    rc, stdout, err = run(common + ["-o", out, "--on-bad-interval", "pad"], capsys)
    assert rc == 0, err
    assert "1 padded with N" in stdout and "1 intervals skipped" in stdout  # an unknown chromosome cannot be padded
    padded = genome_seq(d, "chr2", 80, 90) + "N" * 10
    seqs = [genome_seq(d, "chr1", 10, 30), padded, reverse_complement(genome_seq(d, "chr1", 300, 320))]
    want = ISM_predict(seqs, model(), return_df=False, progress=False, engine="full")
    with open_results(out) as r:
        assert r.regions["name"].tolist() == ["a", "past_end", "b"]
        assert r.sequence(1) == padded
        np.testing.assert_array_equal(r.scores[:], want)


# ---------------------------------------------------------------------------------------------
# know the cost; NaN counts; version and help; torch.save files
# ---------------------------------------------------------------------------------------------
def test_output_estimate_refuses_a_huge_run_before_the_file_exists(d, tmp_path):
    regions = __import__("pandas").DataFrame({"chrom": ["chr1"] * 3, "start": [0, 20, 40], "end": [20, 40, 60]})
    out = tmp_path / "big.h5"
    per_region = L * 4 * 2 * L * 4  # (P, 4, T, L_out) float32
    with pytest.raises(RunError, match=r"--output: .*--length-aggfunc.*--yes"):
        ism_regions(model(), regions, str(d / "genome.fa"), str(out), progress=False,
                    max_output_bytes=3 * per_region - 1)
    assert not out.exists()
    with ism_regions(model(), regions, str(d / "genome.fa"), str(out), progress=False,
                     max_output_bytes=3 * per_region) as r:
        assert r.scores.nbytes == 3 * per_region


def test_log2fc_nan_count_is_reported_even_when_quiet(d, tmp_path, capsys):
    path = bed(d, "ok.bed", [("chr1", 10, 30, "a", 0, "+"), ("chr2", 5, 25, "b", 0, "-")])
    out = tmp_path / "o.h5"
    rc, _, err = run(["ism", "-m", "inputs_models:build_centred", "--bed", path, "--genome", d / "genome.fa", "-o",
                      out, "-q", "--compare", "log2FC"], capsys)
    assert rc == 0, err
    with open_results(out) as r:
        n = int(np.isnan(r.scores[:]).sum())
    assert n > 0
    assert f"warning: {n} of the scores computed now are NaN" in err and "--compare subtract" in err


def test_version_and_help_examples(capsys):
    from basewise import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
    for cmd in ("ism", "attribute"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and f"basewise {cmd} -m" in text


@pytest.mark.parametrize("what", ["state_dict", "module"])
def test_torch_save_files_are_answered_with_what_to_do(d, tmp_path, capsys, what):
    p = tmp_path / f"{what}.pt"
    m = model()
    torch.save(m.state_dict() if what == "state_dict" else m, p)
    (tmp_path / "s.fa").write_text(">s\n" + "ACGT" * 5 + "\n")
    out = tmp_path / "o.h5"
    rc, _, err = run(["ism", "-m", p, "--fasta", tmp_path / "s.fa", "-o", out, "-q"], capsys)
    assert rc == 2 and "torch.save" in err and "load_state_dict" in err and ".py:build" in err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# logs and live reading
# ---------------------------------------------------------------------------------------------
def test_progress_in_a_log_file_has_no_carriage_returns(d, tmp_path):
    path = bed(d, "ok.bed", [("chr1", 10 + i, 30 + i, f"r{i}", 0, "+") for i in range(4)])
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        p = subprocess.run([sys.executable, "-m", "basewise", "ism", "-m", "inputs_models:build", "--bed", str(path),
                            "--genome", str(d / "genome.fa"), "-o", str(tmp_path / "o.h5"), "--chunk-size", "2"],
                           cwd=d, stderr=fh, stdout=subprocess.PIPE, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(d)})
    assert p.returncode == 0
    text = log.read_text()
    assert "\r" not in text
    assert "4/4 regions (100%)" in text and "uncompressed" in text


def test_results_can_be_read_while_a_run_writes_them(tmp_path):
    path = tmp_path / "live.h5"
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, numpy as np, pandas as pd
        from basewise.results import ResultsWriter
        regions = pd.DataFrame({{"name": ["a", "b", "c"], "chrom": ["a", "b", "c"], "start": 0, "end": 5,
                                 "strand": "+"}})
        w = ResultsWriter({str(path)!r}, "attribution", regions, seq_len=5, arguments={{}})
        w.write([0], np.zeros((1, 5), np.int8), np.full((1, 4, 5), 2.0, np.float32))
        open({str(ready)!r}, "w").close()
        time.sleep(60)
    """)])
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert time.time() < deadline and child.poll() is None, "the writer did not start"
            time.sleep(0.1)
        with open_results(path) as r:  # the writer holds HDF5's lock: read without it
            assert r.done.tolist() == [True, False, False]
            np.testing.assert_array_equal(r.scores[0], np.full((4, 5), 2.0, np.float32))
    finally:
        child.kill()
        child.wait()


# ---------------------------------------------------------------------------------------------
# the README's worked example, end to end on a small genome
# ---------------------------------------------------------------------------------------------
def test_worked_example_end_to_end(d, tmp_path, capsys):
    """Gzipped narrowPeak input with track lines, summit centring, a bad interval skipped, a
    per-position summary, and a bigWig export read back with pyBigWig."""
    pyBigWig = pytest.importorskip("pyBigWig")
    import pandas as pd

    W = 16
    peaks = [narrowpeak("chr1", 20, 120, "p1", 30), narrowpeak("chr1", 30, 90, "p2", 25, "-"),  # overlaps p1
             narrowpeak("chr2", 60, 90, "near_end", 25),  # summit 85 + 8 > 90 bp: past the end of chr2
             narrowpeak("chr1", 300, 380, "p3", 10)]
    path = bed(d, "worked.narrowPeak.gz", peaks, gz=True)
    out = tmp_path / "ism.h5"
    rc, stdout, err = run(["ism", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa",
                           "--width", W, "--start-pos", 2, "--end-pos", 14, "--compare", "subtract",
                           "--tasks", 1, "--length-aggfunc", "mean", "--on-bad-interval", "skip", "-o", out], capsys)
    assert rc == 0, err
    assert "3 regions" in stdout and "1 intervals skipped" in stdout
    assert "uncompressed" in err and "near_end" in err  # the estimate and the skipped interval are logged
    starts = [20 + 30 - W // 2, 30 + 25 - W // 2, 300 + 10 - W // 2]
    seqs = [genome_seq(d, "chr1", starts[0], starts[0] + W),
            reverse_complement(genome_seq(d, "chr1", starts[1], starts[1] + W)),
            genome_seq(d, "chr1", starts[2], starts[2] + W)]
    from basewise.transforms import Aggregate

    want = ISM_predict(seqs, model(), prediction_transform=Aggregate(tasks=[1], length_aggfunc="mean"),
                       start_pos=2, end_pos=14, compare_func="subtract", return_df=False, progress=False)
    with open_results(out) as r:
        assert r.regions["start"].tolist() == starts and r.skipped["name"].tolist() == ["near_end"]
        np.testing.assert_allclose(r.scores[:], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())

    # per-position score as the summary defines it: mean |effect| over the 3 substitutions
    ref = [np.array(["ACGT".index(c) for c in s[2:14]]) for s in seqs]
    per_pos = []
    for i in range(3):
        eff = np.abs(want[i, :, :, 0, 0])  # (P, 4)
        mask = np.ones_like(eff, bool)
        mask[np.arange(12), ref[i]] = False
        per_pos.append((eff * mask).sum(1) / 3)
    top_tsv = tmp_path / "top.tsv"
    rc, _, err = run(["summarize", out, "--by", "position", "--top", 1, "-o", top_tsv], capsys)
    assert rc == 0, err
    top = pd.read_csv(top_tsv, sep="\t")
    assert len(top) == 3
    for i in range(3):
        row = top.iloc[i]
        j = int(np.argmax(per_pos[i]))
        # genome coordinate of mutated position j: + strand start + 2 + j; - strand end - 1 - (2 + j)
        pos = starts[i] + W - 1 - (2 + j) if i == 1 else starts[i] + 2 + j
        assert int(row["pos"]) == pos
        np.testing.assert_allclose(float(row["score"]), per_pos[i][j], rtol=1e-5)

    bw = tmp_path / "ism.bw"
    rc, _, err = run(["export-bigwig", out, "--genome", d / "genome.fa", "-o", bw], capsys)
    assert rc == 0, err
    track = {}
    for i in range(3):
        for j in range(12):
            pos = starts[i] + W - 1 - (2 + j) if i == 1 else starts[i] + 2 + j
            track.setdefault(pos, []).append(per_pos[i][j])
    assert any(len(v) == 2 for v in track.values())  # the test covers merging
    f = pyBigWig.open(str(bw))
    try:
        assert f.chroms("chr1") == 400
        for pos, vals in track.items():  # overlapping regions (p1, p2) merged by their mean
            np.testing.assert_allclose(f.values("chr1", pos, pos + 1)[0], np.mean(vals), rtol=1e-5)
        assert f.intervals("chr2") is None or len(f.intervals("chr2")) == 0
    finally:
        f.close()


def test_progress_moves_within_a_chunk(d, tmp_path, capsys, monkeypatch):
    import basewise.runs

    seqs = ["ACGTNACGTA", "TTGCA" * 2]
    counts = []
    ISM_predict(seqs, model(), return_df=False, progress=counts.append, start_pos=1, end_pos=8)
    assert sum(counts) == 3 * 2 * 7 + 1  # the N at offset 4 has 4 substitutions

    init = basewise.runs._LogProgress.__init__
    monkeypatch.setattr(basewise.runs._LogProgress, "__init__",
                        lambda self, *a, **k: init(self, *a, **{**k, "every": 0.0}))
    path = bed(d, "chunk.bed", [("chr1", 10 + i, 30 + i, f"r{i}", 0, "+") for i in range(4)])
    rc, _, err = run(["ism", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "-o",
                      tmp_path / "o.h5", "--chunk-size", "4", "--batch-size", "8", "--engine", "full"], capsys)
    assert rc == 0, err
    lines = [x for x in err.splitlines() if "regions (" in x and "/4 regions" in x]
    assert len(lines) > 4 and "4/4 regions (100%)" in lines[-1]  # many updates inside the one chunk


def test_a_region_failing_mid_run_is_named(d, tmp_path, capsys):
    path = bed(d, "picky.bed", [("chr1", 10, 30, "fine0", 0, "+"), ("chr1", 40, 60, "fine1", 0, "+"),
                                ("chr1", 100, 120, "starts_with_N", 0, "+"), ("chr1", 140, 160, "fine2", 0, "+")])
    out = tmp_path / "o.h5"
    rc, _, err = run(["ism", "-m", "inputs_models:build_picky", "--bed", path, "--genome", d / "genome.fa", "-o",
                      out, "-q", "--chunk-size", "2", "--engine", "full"], capsys)
    assert rc == 2
    assert "region 'starts_with_N' (chr1:100-120)" in err and "starts with N" in err
    with open_results(out) as r:  # the chunk before it is saved; the same command resumes there
        assert r.done.tolist() == [True, True, False, False]


# ---------------------------------------------------------------------------------------------
# basewise attention
# ---------------------------------------------------------------------------------------------
ATTN_SRC = textwrap.dedent("""
    import torch

    class Attn(torch.nn.Module):
        # (B, 4, L) -> (B, 1): a conv, two nn.MultiheadAttention blocks, a mean
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv1d(4, 8, 3, padding=1)
            self.a1 = torch.nn.MultiheadAttention(8, 2, batch_first=True)
            self.a2 = torch.nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = torch.nn.Linear(8, 1)

        def forward(self, x):
            h = self.conv(x).transpose(1, 2)
            h = h + self.a1(h, h, h)[0]
            h = h + self.a2(h, h, h)[0]
            return self.head(h.mean(1))

    def build():
        return Attn()
""")


def test_attention_command(d, tmp_path, capsys):
    from basewise import get_attention_scores

    (d / "attn_models.py").write_text(ATTN_SRC)
    import attn_models

    path = bed(d, "attn.bed", [("chr1", 10 + 7 * i, 30 + 7 * i, f"r{i}", 0, "+-"[i % 2]) for i in range(3)])
    out = tmp_path / "att.h5"
    argv = ["attention", "-m", "attn_models:build", "--bed", path, "--genome", d / "genome.fa", "-q"]
    rc, stdout, err = run(argv + ["-o", out, "--chunk-size", "2"], capsys)
    assert rc == 0, err
    seqs = [genome_seq(d, "chr1", 10, 30), reverse_complement(genome_seq(d, "chr1", 17, 37)),
            genome_seq(d, "chr1", 24, 44)]
    want = get_attention_scores(attn_models.build(), seqs)  # (3, 2 blocks, 2 heads, L, L)
    with open_results(out) as r:
        assert r.kind == "attention" and r.scores.shape == (3, 2, 2, L, L)
        np.testing.assert_allclose(r.scores[:], want, rtol=1e-6, atol=1e-7)

    out2 = tmp_path / "att2.h5"
    rc, _, err = run(argv + ["-o", out2, "--blocks", "-1", "--average-heads", "--dtype", "float16"], capsys)
    assert rc == 0, err
    want = get_attention_scores(attn_models.build(), seqs, block_idx=-1, average_heads=True)  # (3, L, L)
    with open_results(out2) as r:
        assert r.scores.shape == (3, 1, 1, L, L) and r.scores.dtype == np.float16
        np.testing.assert_allclose(r.scores[:, 0, 0], want, rtol=2e-3, atol=1e-3)

    rc, _, err = run(argv + ["-o", tmp_path / "x.h5", "--blocks", "5"], capsys)
    assert rc == 2 and "--blocks:" in err and "2 attention blocks" in err
    rc, _, err = run(["attention", "-m", "inputs_models:build", "--bed", path, "--genome", d / "genome.fa", "-q",
                      "-o", tmp_path / "y.h5"], capsys)
    assert rc == 2 and "no attention blocks" in err


def test_regions_larger_than_a_chunk_are_split_into_chunks(tmp_path):
    import pandas as pd

    from basewise.results import ResultsWriter

    regions = pd.DataFrame({"name": ["a", "b"], "chrom": ["a", "b"], "start": 0, "end": 3, "strand": "+"})
    scores = np.random.default_rng(0).random((2, 4, 4, 400, 400), dtype=np.float32)  # 10 MB per region
    path = tmp_path / "big.h5"
    with ResultsWriter(path, "attention", regions, seq_len=3, arguments={}) as w:
        w.write([0, 1], np.zeros((2, 3), np.int8), scores)
    with open_results(path) as r:
        chunks = r.scores.chunks
        assert np.prod(chunks) * 4 <= 4 << 20 and chunks[0] == 1
        np.testing.assert_array_equal(r.scores[:], scores)

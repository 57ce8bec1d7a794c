"""benchmarks/gpu_check.sh --dry-run: every step of the prepared GPU check, on the CPU at toy sizes,
so that the script cannot rot between the rare GPU runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_check.sh")
STEPS = ["env", "build", "tests", "tests_other", "bench_ops", "ops_fallback", "bench_ism", "bench_ism_more", "bench_attr"]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_BUDGET="400")
    env.pop("OUT", None)
    dest = tmp_path / "out"
    r = subprocess.run(["bash", SCRIPT, "--dry-run", "--bundle", str(dest)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    # --bundle: three files for the device tool; everything else in the tarball
    assert sorted(p.name for p in dest.iterdir()) == ["gpu_check.tar.gz", "summary.json", "summary.txt"]
    with tarfile.open(dest / "gpu_check.tar.gz") as tar:
        tar.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    tmp_path = tmp_path / "gpu_check"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert [s["name"] for s in summary["steps"]] == STEPS
    assert all(s["status"] == "ok" for s in summary["steps"]), summary
    for name in ("env.json", "build.json", "bench_ops.json", "ops_fallback.json", "bench_ism.json",
                 "bench_attr.json", "tests.xml", "summary.txt"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "build.json").read_text())["mutate_matches_cpu"] is True
    ism = json.loads((tmp_path / "bench_ism.json").read_text())
    rows = ism["models"]["tiny CNN"]["dtypes"]["float32"]
    assert rows["basewise full"]["error"] == 0.0 and rows["basewise incremental"]["error"] < 1e-5
    assert "ISM tiny CNN float32" in (tmp_path / "summary.txt").read_text()


def test_gpu_check_refuses_unknown_options(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    r = subprocess.run(["bash", SCRIPT, "--bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown option" in r.stderr

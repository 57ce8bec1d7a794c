"""Region runs on Ray: a local instance with 2 workers, and a 2-node testing cluster.

Scores under Ray equal the single-process run's: bit-identical here (the same chunks, the same
calls; tolerance stated for other layouts: 1e-6 of the output scale, float32 rounding of
different thread counts). Ray instances listen on 127.0.0.1 only.
"""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import basewise  # noqa: E402
from basewise._ray import start_local_ray  # noqa: E402
from basewise.cli import main  # noqa: E402
from basewise.results import open_results  # noqa: E402

MODEL_SRC = textwrap.dedent("""
    import os, signal, torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1 = torch.nn.Conv1d(4, 6, 5, padding=2)
            self.act = torch.nn.ReLU()
            self.c2 = torch.nn.Conv1d(6, 2, 5, padding=2)
            self.pool = torch.nn.AdaptiveAvgPool1d(1)

        def forward(self, x):
            return self.pool(self.c2(self.act(self.c1(x))))

    class Killing(Net):
        # SIGKILLs its own (Ray worker) process once, when kill-once exists beside this file
        def forward(self, x):
            marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill-once")
            if os.path.exists(marker) and _in_ray_worker() and _claim(marker):
                os.kill(os.getpid(), signal.SIGKILL)
            return super().forward(x)

    def _claim(marker):
        # exactly one worker wins the marker, however many see it at once
        try:
            os.remove(marker)
            return True
        except FileNotFoundError:
            return False

    def _in_ray_worker():
        try:
            import ray
            return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
        except Exception:
            return False

    class Stalling(Net):
        # sleeps for an hour once (a worker that never answers), when stall-once exists beside this file
        def forward(self, x):
            marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stall-once")
            if os.path.exists(marker) and _in_ray_worker() and _claim(marker):
                import time
                time.sleep(3600)
            return super().forward(x)

    def build():
        return Net()

    def build_stalling():
        return Stalling()

    def build_killing():
        return Killing()
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    (d / "raymodels.py").write_text(MODEL_SRC)
    rng = np.random.default_rng(1)
    (d / "g.fa").write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 3000)) + "\n")
    rows = []
    for i in range(24):
        s = int(rng.integers(0, 2900))
        rows.append(f"chr1\t{s}\t{s + 60}\tr{i}\t0\t{'+-'[i % 2]}")
    (d / "r.bed").write_text("\n".join(rows) + "\n")
    return d


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs, loopback only) shared by this module's tests."""
    if ray.is_initialized():
        ray.shutdown()
    start_local_ray(num_cpus=2)
    yield
    ray.shutdown()


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _ism(d, out, *extra):
    return ["ism", "-m", d / "raymodels.py:build", "--bed", d / "r.bed", "--genome", d / "g.fa", "-o", out,
            "-q", "--chunk-size", "5", "--engine", "full", *extra]


def _scores(path):
    with open_results(path) as r:
        assert r.done.all()
        return r.scores[()]


def test_local_instance_listens_on_loopback_only(local_ray):
    import psutil

    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    ray_pids = {p.pid for p in psutil.process_iter(["cmdline"])
                if any("ray" in c for c in (p.info["cmdline"] or [])[:3])}
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ray_pids]
    assert listening, "no Ray process listens"
    assert {c.laddr.ip for c in listening} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def test_ism_on_two_workers_equals_single_process(local_ray, data, tmp_path, capsys):
    assert _run(_ism(data, tmp_path / "local.h5"), capsys)[0] == 0
    rc, out, err = _run(_ism(data, tmp_path / "ray.h5", "--ray", "auto", "--workers", "2",
                             "--threads-per-worker", "1"), capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(_scores(tmp_path / "ray.h5"), _scores(tmp_path / "local.h5"))


def test_attribution_with_seed_equals_single_process(local_ray, data, tmp_path, capsys):
    base = ["attribute", "-m", data / "raymodels.py:build", "--bed", data / "r.bed", "--genome", data / "g.fa",
            "-q", "--chunk-size", "6", "--seed", "7", "--n-shuffles", "3", "--target", "1", "-o"]
    assert _run(base + [tmp_path / "a.h5"], capsys)[0] == 0
    rc, _, err = _run(base + [tmp_path / "b.h5", "--ray", "auto", "--workers", "2"], capsys)
    assert rc == 0, err
    a, b = _scores(tmp_path / "a.h5"), _scores(tmp_path / "b.h5")
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())


def test_python_api_with_a_model_object(local_ray, data, tmp_path):
    sys.path.insert(0, str(data))
    try:
        import raymodels
    finally:
        sys.path.remove(str(data))
    import pandas as pd

    m = raymodels.build().eval()
    bed = pd.read_csv(data / "r.bed", sep="\t", header=None, names=["chrom", "start", "end", "name", "score", "strand"])
    with basewise.runs.ism_regions(m, bed, str(data / "g.fa"), str(tmp_path / "api.h5"), engine="full",
                                   chunk_size=7, progress=False) as r:
        local = r.scores[()]
    with basewise.runs.ism_regions(m, bed, str(data / "g.fa"), str(tmp_path / "api_ray.h5"), engine="full",
                                   chunk_size=7, progress=False, ray=True, workers=2) as r:
        np.testing.assert_array_equal(r.scores[()], local)
        assert r.run_summary["computed"] == len(bed)


def _faulty_worker_run_equals_local(data, tmp_path, capsys, builder: str, marker_name: str) -> None:
    """Run ISM with a model whose worker misbehaves once (the marker file is claimed by exactly one
    worker), and check the run completes with the single-process scores."""
    marker = data / marker_name
    marker.write_text("")
    assert _run(_ism(data, tmp_path / "local.h5"), capsys)[0] == 0
    args = _ism(data, tmp_path / "ray.h5", "--ray", "auto", "--workers", "2")
    args[2] = data / f"raymodels.py:{builder}"
    rc, _, err = _run(args, capsys)
    assert rc == 0, err
    assert not marker.exists(), f"no worker ran {builder}'s fault"
    np.testing.assert_array_equal(_scores(tmp_path / "ray.h5"), _scores(tmp_path / "local.h5"))


def test_worker_killed_mid_run_costs_only_its_chunks(local_ray, data, tmp_path, capsys):
    _faulty_worker_run_equals_local(data, tmp_path, capsys, "build_killing", "kill-once")


def test_driver_interrupted_then_resumed(local_ray, data, tmp_path, capsys, monkeypatch):
    from basewise.results import ResultsWriter

    assert _run(_ism(data, tmp_path / "local.h5"), capsys)[0] == 0
    real = ResultsWriter.write
    calls = []

    def write_then_stop(self, *a, **k):
        real(self, *a, **k)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ResultsWriter, "write", write_then_stop)
    args = _ism(data, tmp_path / "ray.h5", "--ray", "auto", "--workers", "2")
    rc, _, err = _run(args, capsys)
    assert rc == 130 and "10 of 24 regions are saved" in err
    monkeypatch.setattr(ResultsWriter, "write", real)
    rc, out, err = _run(args, capsys)
    assert rc == 0 and "14 computed now, 10 resumed" in out, (out, err)
    np.testing.assert_array_equal(_scores(tmp_path / "ray.h5"), _scores(tmp_path / "local.h5"))


def test_bad_inputs_give_the_local_errors_before_any_worker(local_ray, data, tmp_path, capsys):
    cases = [
        ["--bed", data / "missing.bed"],
        ["--width", "10000"],
        ["--start-pos", "70"],
    ]
    for extra in cases:
        local = _ism(data, tmp_path / "x.h5") + [str(e) for e in extra]
        rc1, _, err1 = _run(local, capsys)
        rc2, _, err2 = _run(local + ["--ray", "auto"], capsys)
        assert rc1 == rc2 == 2 and err1 == err2 and len(err2.strip().splitlines()) == 1, (err1, err2)
        assert not (tmp_path / "x.h5").exists()
    rc, _, err = _run(_ism(data, tmp_path / "y.h5", "--workers", "2"), capsys)
    assert rc == 2 and "--ray" in err


def test_ray_not_installed_is_one_line(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc, _, err = _run(_ism(data, tmp_path / "z.h5", "--ray", "local"), capsys)
    assert rc == 2 and 'basewise[ray]' in err and len(err.strip().splitlines()) == 1


CLUSTER_DRIVER = textwrap.dedent("""
    # Drives `basewise ism ARGS --ray auto` on a 2-node ray.cluster_utils.Cluster (1 CPU each, so
    # each node holds exactly one of the 2 one-CPU workers) and, right after the first chunk is
    # written, kills the worker node as a lost machine dies: its raylet and the rest of its Ray
    # processes (remove_node, SIGKILL, no draining), then its worker processes (remove_node
    # leaves those to notice on their own, and meanwhile they still answer). Prints one JSON line.
    import json, sys
    import psutil
    import ray
    from ray.cluster_utils import Cluster
    from basewise._ray import RayRunner, _loopback_env
    from basewise.cli import main
    from basewise.results import ResultsWriter

    # the GCS marks a node dead after 5 missed 1 s health checks (default: 5 x 3 s)
    HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
              "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}
    with _loopback_env():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": HEALTH,
                                                                "include_dashboard": False})
        node2 = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    seen = {"writes": 0, "dead_seen": False}
    try:
        with _loopback_env():
            ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        seen["loopback"] = all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())
        seen["node2"] = node2.node_id
        real_init, real_write, real_dead = RayRunner.__init__, ResultsWriter.write, RayRunner._dead_nodes

        def init(self, *a, **k):
            real_init(self, *a, **k)
            seen["worker_nodes"] = sorted(self.nodes.values())

        def write_then_remove(self, *a, **k):
            real_write(self, *a, **k)
            seen["writes"] += 1
            if seen["writes"] == 1:
                raylet = psutil.Process(node2.all_processes["raylet"][0].process.pid)
                workers = raylet.children(recursive=True)
                cluster.remove_node(node2, allow_graceful=False)
                for p in workers:
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
                seen["killed"] = len(workers)

        def dead_nodes(self):
            dead = real_dead(self)
            seen["dead_seen"] |= node2.node_id in dead
            return dead

        RayRunner.__init__, ResultsWriter.write, RayRunner._dead_nodes = init, write_then_remove, dead_nodes
        seen["rc"] = main(sys.argv[1:] + ["--ray", "auto"])
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(seen))
""")


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (Ray workers lead their own process groups)."""
    import os
    import signal

    import psutil

    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                p.send_signal(signal.SIGKILL)
        except (OSError, psutil.Error):
            pass


def test_node_removed_mid_run_on_a_two_node_cluster(data, tmp_path, capsys):
    """Ray's own testing cluster, two nodes in this machine: the worker node is removed (killed)
    after the first chunk is written; the driver learns the node is dead, the chunks its worker
    held (or was given since) run on the head's worker, and the run completes, identical.

    The cluster runs in a child process in its own session: Cluster changes process-wide state
    (signal and exit handlers, the process group its reapers signal), which must not reach pytest
    or this module's other Ray instance; a run that hangs is killed with its whole cluster."""
    import json
    import os
    import subprocess

    assert _run(_ism(data, tmp_path / "local.h5"), capsys)[0] == 0
    script = tmp_path / "cluster_driver.py"
    script.write_text(CLUSTER_DRIVER)
    args = _ism(data, tmp_path / "ray.h5", "--workers", "2", "--threads-per-worker", "1")
    args[args.index("--chunk-size") + 1] = "1"  # 24 chunks: the removal surely finds some left
    env = dict(os.environ, BASEWISE_RAY_STALL_S="120")  # only the node check may rescue the run
    proc = subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)  # the driver and its whole cluster
        out, err = proc.communicate()
        pytest.fail(f"the run did not finish in 100 s:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["rc"] == 0 and seen["loopback"], err[-3000:]
    assert len(set(seen["worker_nodes"])) == 2 and seen["node2"] in seen["worker_nodes"]
    assert seen["killed"] >= 1 and seen["dead_seen"] and seen["writes"] == 24
    np.testing.assert_array_equal(_scores(tmp_path / "ray.h5"), _scores(tmp_path / "local.h5"))


def test_a_chunk_stuck_behind_an_unavailable_actor_runs_elsewhere(local_ray, data, tmp_path, capsys, monkeypatch):
    """A chunk whose actor never answers (here: a worker that sleeps forever on one region, like
    an actor waiting for a restart no node has room for) is started again on another actor after
    the stall time; the run completes with the same scores."""
    monkeypatch.setenv("BASEWISE_RAY_STALL_S", "3")
    _faulty_worker_run_equals_local(data, tmp_path, capsys, "build_stalling", "stall-once")

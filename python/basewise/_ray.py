"""Region runs on a Ray cluster: model replicas as actors, a single writer at the driver.

Design (issue "Past one machine"):

* **Workers.** Each replica is a Ray actor that loads the model once (from its ``-m`` spec, or
  from Ray's object store where a model object was put once), builds its transform and, on first
  use, the incremental plan (cached in the actor's process, reused for every chunk), and scores
  chunks of regions. It reads the FASTA itself (the cluster shares a filesystem), so the driver
  ships only region indices and receives (indices, one-hot indices, scores) back. GPU actors
  (``num_gpus=1``) when the cluster has GPUs. An ISM actor imports torch.export's tracer when it
  starts (~2 s of one CPU, measured: it was most of an actor's first chunk), so the run's start-up,
  not its first chunks, carries it; the capture itself stays in the actor's first chunk.
* **Two chunks in flight per actor**: the next chunk is queued on the actor before the current one
  returns, so an actor does not wait while the driver receives, writes and submits. The driver
  blocks in ``ray.wait(num_returns=1)``; it keeps a per-chunk trace (``RayRunner.trace``: submit,
  scoring start and end and CPU time in the actor, result ready, written) that
  ``benchmarks/bench_scale.py`` turns into a profile.
* **One results file, nothing lost.** The driver is the only writer: each finished chunk is
  written (and flushed) by :class:`basewise.results.ResultsWriter` as it arrives, in any order.
  Actors are created with ``max_restarts=-1, max_task_retries=-1``: a worker killed at any moment
  (SIGKILL, node lost) costs only the chunks it held, which Ray re-runs on the restarted actor
  (on another node if its node is gone); a chunk whose actor cannot come back is handed to another
  actor. Ray alone would leave a chunk waiting forever on an actor of a lost node that no other
  node has room for (it stays "restarting": its tasks neither fail nor run), so the driver also
  watches the nodes: once the cluster marks a node dead (GCS health checks, ~15 s by default),
  the chunks its actors held start on the other actors. The driver killed at any moment leaves
  a file with every written chunk marked done, which the same command resumes. Results do not
  depend on the layout: a chunk is the same regions and the same calls whichever worker
  computes it.
* **Loopback only for local instances.** ``ray="local"`` starts Ray with
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (set only while Ray starts) and
  ``_node_ip_address="127.0.0.1"``: measured with Ray 2.60, the head then listens on 127.0.0.1
  only (without the variable Ray replaces 127.0.0.1 by the machine's network address).
* **Resources.** An actor asks for ``min(threads, CPUs / workers)`` CPUs (fractional), so that
  actors never claim more CPUs than the cluster has (on 2 CPUs a pipeline whose actors claim
  every CPU can deadlock); each sets its own torch thread count in its own process.
* **Defaults.** ``workers``: one per GPU of the cluster; without GPUs, ``CPUs // threads`` (at
  least 1). ``threads_per_worker``: on CPU workers 2; on GPU workers CPUs per GPU, at most 8.

Capacity at 1,000 GPUs: the writer receives scores only (a Basset-like ISM region at L = 1,000
with 164 tasks aggregated to 1 is 16 kB; unaggregated profiles are MBs), so it saturates at the
HDF5 write rate (measured in ``benchmarks/bench_scale.py``: hundreds of MB/s with lzf, less with
gzip). When ``regions/s x bytes/region`` nears that (e.g. 1,000 GPUs x 30 regions/s x 1 MB), the
next step is one results file per worker plus a virtual dataset (HDF5 VDS) stitching them, or
compressing in the workers; the chunk protocol here stays the same.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np

from .runs import RegionJob, RunError

__all__ = ["RayRunner", "start_local_ray"]

_IN_FLIGHT = 2  # chunks queued per actor: one computing, one waiting (hides the round trip)
_last_run: Optional[tuple] = None  # (trace, stats) of the latest RayRunner.run in this process (benchmarks)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RunError('--ray: Ray is not installed; pip install "basewise[ray]"') from None
    return ray


@contextlib.contextmanager
def _loopback_env() -> Iterator[None]:
    """While a local Ray instance starts: make Ray keep 127.0.0.1 as its node address.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is imported (its processes started
    now inherit the variable); in this already running process the constant it was read into is
    set for the duration of the start, then both are restored."""
    from ray._private import ray_constants

    old = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    old_const = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = old


def start_local_ray(num_cpus: Optional[int] = None, num_gpus: Optional[int] = None) -> None:
    """Start a Ray instance on this machine that listens on 127.0.0.1 only.

    Example:
        >>> start_local_ray(num_cpus=1)  # doctest: +SKIP
    """
    ray = _import_ray()
    with _loopback_env():
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)


def _connect(address: Any) -> bool:
    """Connect to Ray as ``address`` says; returns True when this call started it (stop it after)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if address is True:
        address = "auto" if os.environ.get("RAY_ADDRESS") else "local"
    if not isinstance(address, str) or not (address in ("local", "auto") or address.startswith("ray://")
                                            or ":" in address):
        raise RunError(f"--ray: expected 'local', 'auto' or a ray://host:port address, got {address!r}")
    try:
        if address == "local":
            start_local_ray()
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
        raise RunError(f"--ray: cannot connect to Ray at {address!r}: {type(e).__name__}: "
                       f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    return True


def _cause(e: BaseException) -> str:
    """The last meaningful line of a Ray error (the remote exception's own message)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith(" ")]
    errs = [ln for ln in lines if "Error" in ln.split(":")[0]]
    return (errs[-1] if errs else (lines[-1] if lines else type(e).__name__))[:300]


def _pickle_user_modules_by_value(*objs: Any) -> None:
    """Modules of the user's own classes (a script, a notebook helper file) may not be
    importable on the workers: ship them by value (cloudpickle), as Ray recommends. Installed
    packages (site-packages, the standard library, torch, basewise) stay by reference."""
    import inspect

    from ray import cloudpickle

    seen = set()
    for obj in objs:
        if obj is None:
            continue
        mods = obj.modules() if hasattr(obj, "modules") else [obj]
        for m in mods:
            name = type(m).__module__
            if name in seen or name in ("__main__", "builtins"):
                continue
            seen.add(name)
            mod = sys.modules.get(name)
            path = getattr(mod, "__file__", None) or ""
            if not path or "site-packages" in path or "dist-packages" in path or name.split(".")[0] in (
                    "torch", "basewise", "grelu", "enformer_pytorch") or path.startswith(sys.base_prefix):
                continue
            if inspect.ismodule(mod):
                cloudpickle.register_pickle_by_value(mod)


class _Worker:
    """A model replica (a Ray actor): loads the model once, scores chunks of regions."""

    def __init__(self, job: RegionJob, model: Any, threads: int, gpu: bool) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))  # this actor's own process
        if model is not None:
            job = dataclasses.replace(job, model=model)
        kw = dict(job.score_kwargs)
        if job.kind == "ism":
            kw["devices"] = 0 if gpu else "cpu"
        else:
            kw["device"] = "cuda" if gpu else "cpu"
        self.job = dataclasses.replace(job, score_kwargs=kw).prepare()
        if job.kind == "ism" and kw.get("engine", "auto") != "full":
            # a process's first incremental ISM call imports torch.export's tracer (torch._dynamo,
            # sympy: ~2 s of one CPU); pay it here, with the model load, not in the first chunk
            with contextlib.suppress(Exception):
                import torch.export._trace  # noqa: F401

    def score(self, idx: np.ndarray):
        """(this actor's node, the chunk's scores, (start, end, CPU s) of the scoring here): the
        driver learns where each actor runs now, and records where a chunk's time went."""
        import time

        t0, c0 = time.time(), time.process_time()
        result = self.job.score(idx)
        return self.node(), result, (t0, time.time(), time.process_time() - c0)

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class RayRunner:
    """Runs a :class:`~basewise.runs.RegionJob`'s chunks on Ray actors, writing at the driver.

    Args:
        job: the job (its model object, if any, is put in the object store once).
        address: ``"local"``, ``"auto"``, ``True`` or a ``ray://`` address.
        workers: number of actors. Default None (see the module docstring).
        threads_per_worker: torch threads per actor. Default None (see the module docstring).
        stall_s: a chunk waiting longer than ``max(stall_s, 5 x the median chunk time)`` is
            started again on another actor. Default 60 (environment: BASEWISE_RAY_STALL_S).
    """

    def __init__(self, job: RegionJob, address: Any, *, workers: Optional[int] = None,
                 threads_per_worker: Optional[int] = None, stall_s: float = 60.0) -> None:
        self.stall_s = float(os.environ.get("BASEWISE_RAY_STALL_S", stall_s))
        for name, v in (("--workers", workers), ("--threads-per-worker", threads_per_worker)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise RunError(f"{name}: expected a positive integer, got {v!r}")
        ray = _import_ray()
        self.ray = ray
        self.started = _connect(address)
        try:
            res = ray.cluster_resources()
            cpus = float(res.get("CPU", 1.0))
            gpus = int(res.get("GPU", 0))
            self.gpu = gpus > 0
            if threads_per_worker is None:
                threads_per_worker = max(1, min(8, int(cpus // gpus))) if self.gpu else 2
            if workers is None:
                workers = gpus if self.gpu else max(1, int(cpus // threads_per_worker))
            self.n_workers = int(workers)
            cpu_each = max(0.01, min(float(threads_per_worker), cpus / self.n_workers))
            model_ref = None
            # an Aggregate built from options is rebuilt in each worker (it may hold the model)
            transform = None if job.transform_options else job.transform
            if job.model_spec is None:
                _pickle_user_modules_by_value(job.model, job.transform)
                model_ref = ray.put(job.model)  # once: every actor reads it from the object store
            wjob = dataclasses.replace(job, model=None, transform=transform)
            actor_cls = ray.remote(_Worker).options(
                num_cpus=cpu_each, num_gpus=1 if self.gpu else 0, max_restarts=-1, max_task_retries=-1)
            self.actors = [actor_cls.remote(wjob, model_ref, threads_per_worker, self.gpu)
                           for _ in range(self.n_workers)]
            self.threads = threads_per_worker
            # wait until every replica has loaded its model: a model that cannot load (a module
            # missing on the workers, a file they cannot read) is one clear error, now
            try:
                nodes = ray.get([a.node.remote() for a in self.actors])
                self.nodes = dict(zip(map(id, self.actors), nodes))  # actor -> its node
            except ray.exceptions.RayError as e:
                raise RunError(f"--ray: a worker could not load the model: {_cause(e)}") from None
        except RunError:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001
            self.close()
            raise RunError(f"--ray: cannot start the workers: {type(e).__name__}: {e}") from None

    def run(self, chunks: List[np.ndarray], write: Callable[[np.ndarray, np.ndarray, np.ndarray], None]) -> None:
        """Score ``chunks`` on the actors; ``write`` each result here as it arrives.

        A chunk is never left waiting on an actor that cannot answer:

        * an actor whose node the cluster has marked dead (``ray.nodes()``, checked every 2 s
          while a chunk is overdue) gets no new chunks, and the chunks it held start on the others
          at once; it gets chunks again once it answers (Ray restarted it on a live node);
        * an actor Ray gave up on (it raised ``RayActorError``) is dropped, its chunks re-queued;
        * a chunk that has waited much longer than chunks usually take (``max(stall_s, 5 x median
          chunk time)``; e.g. its actor waits for a restart that no node has room for, or hangs) is
          started again on the actor that answered last.

        Whichever copy of a chunk finishes first is written; the others are ignored. When no actor
        has been available for ``10 x stall_s``, the run stops (the file keeps every written chunk).

        Afterwards ``self.trace`` holds one record per written chunk (wall-clock ``time.time()``
        stamps: ``sent``, ``start`` and ``end`` of the scoring in the actor, its ``cpu`` seconds,
        ``ready`` at the driver, ``got``, ``written``) and ``self.run_stats`` the run's wall time,
        the driver's CPU seconds and its time in ``ray.wait``.
        """
        import time

        ray = self.ray
        queue = collections.deque(range(len(chunks)))
        pending: Dict[Any, tuple] = {}  # future -> (chunk number, actor, submit time)
        probes: Dict[Any, Any] = {}  # future of a lost actor's node() -> the actor
        load = {id(a): 0 for a in self.actors}
        alive = list(self.actors)  # actors Ray has not given up on
        lost: set = set()  # id(actor) of actors whose node is dead, until they answer again
        moved: set = set()  # futures whose chunk was already started again elsewhere
        failures: collections.Counter = collections.Counter()
        done = set()
        durations: collections.deque = collections.deque(maxlen=101)  # the latest chunk times
        copies: collections.Counter = collections.Counter()
        last_ok: Dict[int, float] = {}  # actor -> when it last returned a chunk
        node_of = dict(getattr(self, "nodes", {}))  # actor -> the node it last answered from
        last_check = time.monotonic()
        none_since: Optional[float] = None
        # where the time goes (benchmarks/bench_scale.py): one record per written chunk, wall clock
        sent: Dict[Any, float] = {}
        actor_no = {id(a): i for i, a in enumerate(self.actors)}
        self.trace: List[Dict[str, float]] = []
        self.run_stats: Dict[str, float] = {}
        wait_s = 0.0
        t_run, cpu_run = time.time(), time.process_time()

        def available() -> List[Any]:
            return [a for a in alive if id(a) not in lost]

        def submit(k: int, a: Any) -> None:
            f = a.score.remote(chunks[k])
            pending[f] = (k, a, time.monotonic())
            sent[f] = time.time()
            load[id(a)] += 1
            copies[k] += 1

        def again(f: Any) -> None:
            """Queue future f's chunk first, to run elsewhere (once per future)."""
            k = pending[f][0]
            moved.add(f)
            if k not in done and k not in queue:
                queue.appendleft(k)

        while len(done) < len(chunks):
            avail = available()
            for a in avail:
                while queue and load[id(a)] < _IN_FLIGHT:
                    k = queue.popleft()
                    if k not in done:
                        submit(k, a)
            if not pending and not probes:
                raise RunError("--ray: no worker is left to run the remaining chunks")
            now = time.monotonic()
            if avail:
                none_since = None
            elif none_since is None:
                none_since = now
            elif now - none_since > 10 * self.stall_s:
                raise RunError(f"--ray: no worker has been available for {10 * self.stall_s:.0f} s "
                               f"(their nodes are gone); the written chunks are saved: run the same "
                               f"command again to resume")
            median = float(np.median(durations)) if durations else 0.0
            stall = max(self.stall_s, 5 * median)
            tw = time.time()
            ready, _ = ray.wait(list(pending) + list(probes), num_returns=1, timeout=min(1.0, stall))
            t_ready = time.time()
            wait_s += t_ready - tw
            if not ready:
                now = time.monotonic()
                check_s = max(2.0, 2 * median)
                waited = now - min((t for _, _, t in pending.values()), default=now)
                if waited > check_s and now - last_check > check_s and node_of:
                    last_check = now
                    dead = self._dead_nodes()
                    for a in alive:
                        if node_of.get(id(a)) in dead and id(a) not in lost:
                            lost.add(id(a))  # its node is gone: its chunks go to the others now
                            for f in [f for f in pending if pending[f][1] is a and f not in moved]:
                                again(f)
                            probes[a.node.remote()] = a  # answers once Ray restarted it elsewhere
                # stalled: start each chunk waiting longer than `stall` again, on the actor that
                # answered last (known to be alive), then the least loaded
                for f in sorted(pending, key=lambda f: pending[f][2]):
                    k, a_old, t0 = pending[f]
                    if now - t0 <= stall or f in moved or k in done or copies[k] >= 3:
                        continue
                    others = [a for a in available() if a is not a_old]
                    if others:
                        moved.add(f)
                        submit(k, max(others, key=lambda a: (last_ok.get(id(a), -1.0), -load[id(a)])))
                    else:
                        again(f)
                continue
            for f in ready:
                if f in probes:  # a lost actor answers: restarted on a live node, usable again
                    a = probes.pop(f)
                    try:
                        node_of[id(a)] = ray.get(f)
                        lost.discard(id(a))
                    except ray.exceptions.RayError:
                        if a in alive and len(alive) > 1:
                            alive.remove(a)
                    continue
                k, a, t0 = pending.pop(f)
                t_sent = sent.pop(f, t_ready)
                moved.discard(f)
                load[id(a)] -= 1
                try:
                    node, (idx, indices, scores), (t_start, t_end, cpu) = ray.get(f)
                except ray.exceptions.RayTaskError as e:  # the scoring itself raised: a user error
                    cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
                    if isinstance(cause, (ValueError, NotImplementedError, IndexError)):
                        raise RunError(f"{type(cause).__name__}: {str(cause).splitlines()[0]}") from None
                    raise
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
                        ray.exceptions.WorkerCrashedError) as e:
                    # Ray gave up on this actor (restarts are unlimited, so it is gone for good,
                    # e.g. no node can host it): hand the chunk to the others
                    failures[k] += 1
                    if failures[k] > 5:
                        raise RunError(f"--ray: chunk {k} failed on 5 workers; stopping ({_cause(e)})") from None
                    if a in alive and len(alive) > 1:
                        alive.remove(a)
                    if k not in done and k not in queue:
                        queue.append(k)
                    continue
                node_of[id(a)] = node
                lost.discard(id(a))  # it answers: usable again (restarted on a live node)
                last_ok[id(a)] = time.monotonic()
                if k in done:  # a second copy of a chunk that was started again
                    continue
                durations.append(time.monotonic() - t0)
                done.add(k)
                t_got = time.time()
                write(idx, indices, scores)
                self.trace.append(dict(chunk=k, regions=len(idx), actor=actor_no.get(id(a), -1), sent=t_sent,
                                       start=t_start, end=t_end, cpu=cpu, ready=t_ready, got=t_got,
                                       written=time.time()))
        self.run_stats = dict(wall_s=time.time() - t_run, driver_cpu_s=time.process_time() - cpu_run,
                              wait_s=wait_s, t0=t_run, workers=self.n_workers)
        global _last_run
        _last_run = (self.trace, self.run_stats)
        for f in list(pending) + list(probes):  # copies still running or waiting for a lost actor
            with contextlib.suppress(Exception):
                ray.cancel(f)

    def _dead_nodes(self) -> set:
        """IDs of the nodes the cluster has marked dead (empty when Ray cannot say)."""
        try:
            return {n["NodeID"] for n in self.ray.nodes() if not n.get("Alive", True)}
        except Exception:  # noqa: BLE001 - a transient GCS error: try again at the next check
            return set()

    def close(self) -> None:
        """Stop the actors, and Ray itself when this runner started it."""
        ray = self.ray
        for a in getattr(self, "actors", []):
            with contextlib.suppress(Exception):
                ray.kill(a)
        self.actors = []
        if getattr(self, "started", False):
            with contextlib.suppress(Exception):
                ray.shutdown()
            self.started = False

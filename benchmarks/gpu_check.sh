#!/usr/bin/env bash
# The prepared device check: everything GPU-related, verified and measured in one run that fits in
# 8 minutes on one GPU. In order:
#   1. env        the machine: nvidia-smi, torch, basewise.build_info()
#   2. build      basewise's CUDA kernels run on this GPU (ops.fallback_reason(0) is None); if not
#                 and nvcc is present, rebuild (editable, in place) with BASEWISE_CUDA_ARCHS=<arch>-real
#                 and check again; without nvcc the run continues on the plain-PyTorch fallback
#   3. tests      the CUDA tests of the core: tests/test_gpu.py, test_ops.py, test_fallback.py in full
#   3b. tests_other  the CUDA tests of attention, attribution (needs captum, tangermeme) and exactness
#   4. bench_ops  native ops vs plain PyTorch vs a device-to-device memcpy (CUDA events)
#   5. ops_fallback  the same with the plain-PyTorch fallback forced (what users without kernels get)
#   6. bench_ism  Basset-like: every method, batch-size sweep, float32 and bfloat16
#   7. bench_ism_more  BPNet-like, conv+transformer, Enformer-/Borzoi-like (32 central positions),
#                 a shorter sweep (its JSON is written after each model)
#   8. bench_attr attributions on the GPU
# Each step runs under `timeout` (and never past the overall budget, GPU_CHECK_BUDGET seconds,
# default 480); a failed or timed-out step is recorded and the next one runs. Logs, JSON tables and
# summary.{txt,json} go to the folder given (default: $OUT, else ./gpu_check_out), overwritten on
# every run (idempotent: the only other effect is the one-off rebuild of step 2).
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--bundle] [OUT_DIR]
#   --dry-run  no GPU needed: every step on the CPU at toy sizes (CI runs this so the script cannot
#              rot); the build step checks the CPU kernels and does not rebuild.
#   --bundle   leave only three files in OUT_DIR: gpu_check.tar.gz (every log and table) and
#              summary.{txt,json} (for the device tool, which brings back at most 8 files).
# Environment: PYTHON (default python3: the interpreter with a CUDA build of torch; basewise need not
# be installed, step 2 installs it in place, editable, for the GPU's architecture when it cannot be
# imported), GPU_CHECK_BUDGET.
set -uo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dry=0
bundle=0
out=""
for a in "$@"; do
  case "$a" in
    --dry-run) dry=1 ;;
    --bundle) bundle=1 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option '$a'" >&2; exit 2 ;;
    *) out="$a" ;;
  esac
done
out="${out:-${OUT:-$PWD/gpu_check_out}}"
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd)"
dest="$out"
if [ "$bundle" = 1 ]; then
  out="$(mktemp -d)/gpu_check"
  mkdir -p "$out"
fi
py="${PYTHON:-python3}"
budget="${GPU_CHECK_BUDGET:-480}"
t_start=$(date +%s)
summary="$out/summary.txt"
: > "$summary"
: > "$out/steps.tsv"
failures=0
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
cd "$repo" || exit 2

# run_step NAME TIMEOUT_S COMMAND...: log to $out/NAME.log; never past the overall budget.
run_step() {
  local name="$1" limit="$2"
  shift 2
  local now left t0 rc status
  now=$(date +%s)
  left=$((budget - (now - t_start)))
  if [ "$left" -lt 15 ]; then
    status="skipped (budget spent)"
    rc=0
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" 0 "-" >> "$out/steps.tsv"
    echo "[gpu_check] $name: $status"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit="$left"
  echo "[gpu_check] $name (timeout ${limit} s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  case "$rc" in
    0) status="ok" ;;
    124|137) status="TIMEOUT after ${limit} s"; failures=$((failures + 1)) ;;
    *) status="FAILED (exit $rc)"; failures=$((failures + 1)) ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$out/$name.log" >> "$out/steps.tsv"
  echo "[gpu_check] $name: $status ($(($(date +%s) - t0)) s) -> $out/$name.log"
  [ "$status" = ok ] || tail -n 5 "$out/$name.log" | sed 's/^/    /'
  return 0
}

if [ "$dry" = 1 ]; then
  dev=cpu
else
  dev=cuda
  if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh: torch sees no CUDA device here (use --dry-run on a machine without a GPU)" >&2
    exit 2
  fi
fi

# ---- 1. env
env_py='
import json, platform, sys, torch
info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "platform": platform.platform(), "dry_run": sys.argv[1] == "1"}
try:
    import basewise
    info["basewise"] = basewise.build_info()
except Exception as e:
    info["basewise"] = "not importable (step build installs it): %s" % e
for name in ("captum", "tangermeme", "grelu"):
    try:
        info[name] = __import__(name).__version__
    except Exception:
        info[name] = None
if torch.cuda.is_available():
    info["gpus"] = [{"name": torch.cuda.get_device_name(i),
                     "capability": "%d.%d" % torch.cuda.get_device_capability(i),
                     "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                    for i in range(torch.cuda.device_count())]
json.dump(info, open(sys.argv[2], "w"), indent=1)
print(json.dumps(info, indent=1))
'
run_step env 60 bash -c "(command -v nvidia-smi >/dev/null && nvidia-smi || echo 'no nvidia-smi'); \"$py\" -c '$env_py' $dry '$out/env.json'"

# ---- 2. build check (and, on a GPU without usable kernels, one rebuild for its architecture)
check_py='
import json, sys, torch
from basewise import ops
dev = sys.argv[1]
reason = ops.fallback_reason(0 if dev == "cuda" else "cpu")
res = {"device": dev, "build_info": ops.build_info(), "fallback_reason": reason}
if dev == "cuda":
    major, minor = torch.cuda.get_device_capability(0)
    res["arch"] = "%d%d" % (major, minor)
# a real op on the device, against the CPU kernels
ref = torch.randint(0, 5, (3, 50), dtype=torch.uint8)
mut = ops.enumerate_mutants(ref, 0, 50)
x = ops.mutate(ref.to(dev), mut.to(dev)).cpu()
res["mutate_matches_cpu"] = bool(torch.equal(x, ops.mutate(ref, mut)))
json.dump(res, open(sys.argv[2], "w"), indent=1)
print(json.dumps(res, indent=1))
sys.exit(0 if reason is None and res["mutate_matches_cpu"] else 3)
'
build_step() {
  "$py" -c "$check_py" "$dev" "$out/build.json" && return 0
  [ "$dry" = 1 ] && return 1
  local arch nvcc_bin
  arch="$("$py" -c 'import torch; print("%d%d" % torch.cuda.get_device_capability(0))')"
  nvcc_bin="$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)"
  if [ -z "$nvcc_bin" ]; then
    echo "no usable kernels for sm_$arch and no nvcc to rebuild: the run continues on the plain-PyTorch fallback"
    return 1
  fi
  echo "rebuilding basewise with BASEWISE_CUDA_ARCHS=${arch}-real ($nvcc_bin)"
  PATH="$(dirname "$nvcc_bin"):$PATH" BASEWISE_WITH_CUDA=ON BASEWISE_CUDA_ARCHS="${arch}-real" \
    "$py" -m pip install -q --no-build-isolation --no-deps -e "$repo" || return 1
  "$py" -c "$check_py" "$dev" "$out/build.json"
}
export -f build_step
export py dev dry out repo check_py
run_step build 300 bash -c build_step

# ---- 3. every CUDA test
other_tests=(tests/test_attention.py::test_cuda_model_matches_cpu
             tests/test_attribution.py::test_cuda_matches_cpu_and_model_stays
             tests/test_exactness.py::test_plan_ism_never_raises_for_an_unavailable_device)
if [ "$dry" = 1 ]; then
  run_step tests 120 "$py" -m pytest -q -rs -p no:cacheprovider -p no:logging \
    "--junitxml=$out/tests.xml" tests/test_gpu.py tests/test_ops.py::test_cuda_ops_run_on_current_stream \
    tests/test_fallback.py::test_fallback_reason_for_cuda_without_kernels
else
  run_step tests 200 "$py" -m pytest -q -rs -p no:cacheprovider -p no:logging \
    "--junitxml=$out/tests.xml" tests/test_gpu.py tests/test_ops.py tests/test_fallback.py
fi
run_step tests_other 90 "$py" -m pytest -q -rs -p no:cacheprovider -p no:logging \
  "--junitxml=$out/tests_other.xml" "${other_tests[@]}"

# ---- 4-8. benchmarks
if [ "$dry" = 1 ]; then
  run_step bench_ops 90 "$py" benchmarks/bench_ops.py --device cpu --tiny --json "$out/bench_ops.json"
  run_step ops_fallback 90 env BASEWISE_TORCH_OPS=1 "$py" benchmarks/bench_ops.py --device cpu --tiny \
    --json "$out/ops_fallback.json"
  run_step bench_ism 120 "$py" benchmarks/bench_ism.py --device cpu --tiny \
    --skip tangermeme-fast,tangermeme-full,grelu --json "$out/bench_ism.json"
  run_step bench_ism_more 60 true  # the GPU-only second sweep has no toy version beyond bench_ism
  run_step bench_attr 90 "$py" benchmarks/bench_attr.py --device cpu --models convmodel --methods saliency \
    --n-seqs 2 --repeats 1 --min-time 0 --max-repeats 1 --json "$out/bench_attr.json"
else
  run_step bench_ops 90 "$py" benchmarks/bench_ops.py --device cuda --repeats 20 --json "$out/bench_ops.json"
  run_step ops_fallback 60 env BASEWISE_TORCH_OPS=1 "$py" benchmarks/bench_ops.py --device cuda --quick \
    --json "$out/ops_fallback.json"
  run_step bench_ism 170 "$py" benchmarks/bench_ism.py --device cuda --models basset \
    --batch-sizes 256,1024,4096 --dtypes float32,bfloat16 --repeats 3 --json "$out/bench_ism.json"
  run_step bench_ism_more 120 "$py" benchmarks/bench_ism.py --device cuda --models bpnet,transformer,enformer,borzoi \
    --batch-sizes 512,2048 --dtypes float32,bfloat16 --repeats 2 --skip tangermeme-full,grelu \
    --json "$out/bench_ism_more.json"
  run_step bench_attr 90 "$py" benchmarks/bench_attr.py --device cuda --models basset,bpnet \
    --repeats 2 --min-time 0.5 --max-repeats 5 --json "$out/bench_attr.json"
fi

# ---- summary
"$py" - "$out" "$(($(date +%s) - t_start))" "$dry" <<'EOF' | tee "$summary"
import json, os, sys
out, secs, dry = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
steps = [line.rstrip("\n").split("\t") for line in open(os.path.join(out, "steps.tsv"))]
print(f"gpu_check {'DRY RUN (CPU, toy sizes)' if dry else 'on the GPU'}: {secs} s, output in {out}")
for name, status, s, _ in steps:
    print(f"  {name:15s} {status} ({s} s)")
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception:
        return None
env = load("env.json") or {}
for g in env.get("gpus", []):
    print(f"  GPU: {g['name']} (sm {g['capability']}, {g['memory_gb']} GB)")
b = load("build.json")
if b:
    print(f"  kernels: {'native' if b['fallback_reason'] is None else 'FALLBACK: ' + b['fallback_reason']}"
          f" (built for {b['build_info']['cuda_archs'] or 'no CUDA'})")
for fname in ("bench_ism.json", "bench_ism_more.json"):
    r = load(fname)
    for model, m in ((r or {}).get("models") or {}).items():
        for dt, rows in m.get("dtypes", {}).items():
            best = ", ".join(f"{k} {m['mutants'] / v['best_s']:,.0f}/s (batch {v['best_batch']})"
                             for k, v in rows.items() if v.get("best_s"))
            print(f"  ISM {model} {dt}: {best}")
ops_ = load("bench_ops.json")
if ops_:
    for c in ops_["cases"][:2]:
        t = c["median_s"]
        print(f"  op {c['name']}: basewise {c['bytes'] / t['basewise'] / 1e9:.1f} GB/s, "
              f"memcpy {c['bytes'] / t['memcpy'] / 1e9:.1f} GB/s")
summary = {"seconds": secs, "dry_run": dry, "steps": [{"name": n, "status": st, "seconds": int(s)}
                                                     for n, st, s, _ in steps]}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
EOF
if [ "$bundle" = 1 ]; then
  tar czf "$dest/gpu_check.tar.gz" -C "$(dirname "$out")" gpu_check
  cp "$out/summary.txt" "$out/summary.json" "$dest/"
  rm -rf "$(dirname "$out")"
  summary="$dest/summary.txt (all logs and tables: $dest/gpu_check.tar.gz)"
fi
echo "[gpu_check] $failures step(s) failed or timed out; summary: $summary"
[ "$failures" = 0 ]

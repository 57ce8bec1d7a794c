#!/usr/bin/env bash
# Build a basewise wheel with CUDA kernels for every GPU architecture the installed nvcc compiles
# (SASS for each, plus PTX of the newest so that future GPUs JIT-compile it), check that it
# installs and imports in a fresh virtual environment with no nvcc on PATH, and report its size.
#
# The extension links neither libtorch nor a shared CUDA runtime (the CUDA runtime is linked
# statically), so one such wheel per Python version serves every torch >= 2.4, CPU or CUDA, and
# needs only an NVIDIA driver new enough for the nvcc that built it (nvcc 13: driver >= 580; with
# an older driver the ops fall back to plain PyTorch with a warning, see basewise.ops).
#
# Usage: scripts/build_wheel.sh [--out DIR] [--archs "75-real;...;120"] [--reuse-torch] [--no-check]
#   --out DIR       where the wheel goes (default: dist/ in the repository)
#   --archs LIST    CMake CUDA architectures (default: every sm_XX `nvcc --list-gpu-arch` lists,
#                   as XX-real, and the newest as XX = SASS + PTX)
#   --reuse-torch   check in a fresh venv that borrows this Python's installed packages (torch,
#                   numpy, ...) through a .pth file instead of installing the dependencies from the
#                   package index (offline and fast; the wheel itself is installed for real)
#   --no-check      build only
# Environment: PYTHON (default python3), the interpreter that builds (needs pip; scikit-build-core
# and pybind11 installed, else pip builds in an isolated environment), CMAKE_BUILD_PARALLEL_LEVEL.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/dist"
archs=""
check=1
reuse=0
py="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --archs) archs="$2"; shift 2 ;;
    --reuse-torch) reuse=1; shift ;;
    --no-check) check=0; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "build_wheel.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

nvcc="$(command -v nvcc || true)"
[ -n "$nvcc" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc; } || true
if [ -z "$nvcc" ]; then
  echo "build_wheel.sh: nvcc not found (put the CUDA toolkit's bin/ on PATH)" >&2
  exit 1
fi
nvcc_version="$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
if [ -z "$archs" ]; then
  list="$("$nvcc" --list-gpu-arch | sed -n 's/^compute_\([0-9][0-9]*\)$/\1/p' | sort -n | uniq)"
  [ -n "$list" ] || { echo "build_wheel.sh: 'nvcc --list-gpu-arch' listed no architectures" >&2; exit 1; }
  newest="$(echo "$list" | tail -n 1)"
  archs="$(echo "$list" | sed '$d' | sed 's/$/-real/' | tr '\n' ';')$newest"
fi
echo "build_wheel.sh: nvcc $nvcc_version ($nvcc), CUDA architectures: $archs"

mkdir -p "$out"
export PATH="$(dirname "$nvcc"):$PATH"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
isolation=(--no-build-isolation)
"$py" -c "import scikit_build_core, pybind11" 2>/dev/null || isolation=()
tag="$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
before="$(ls "$out"/basewise-*.whl 2>/dev/null || true)"
t0=$(date +%s)
# A build folder of its own (the developer build keeps its short arch list and its cache).
BASEWISE_WITH_CUDA=ON BASEWISE_CUDA_ARCHS="$archs" \
  "$py" -m pip wheel "$root" --no-deps "${isolation[@]}" -w "$out" \
  -C build-dir="$root/build/wheel-allarch-$tag" -q
t1=$(date +%s)
wheel="$(ls -t "$out"/basewise-*-"$tag"-*.whl | head -n 1)"
[ -f "$wheel" ] || { echo "build_wheel.sh: no wheel was produced" >&2; exit 1; }
size_mb="$(du -k "$wheel" | awk '{printf "%.1f", $1 / 1024}')"
so_kb="$("$py" - "$wheel" <<'EOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
print(sum(i.file_size for i in z.infolist() if i.filename.startswith("basewise/_C")) // 1024)
EOF
)"
echo "build_wheel.sh: built $(basename "$wheel") in $((t1 - t0)) s: ${size_mb} MB (native module ${so_kb} KB uncompressed)"
[ -n "$before" ] && echo "  (older wheels in $out were left in place)"

if [ "$check" = 1 ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$py" -m venv "$tmp/venv"
  vpy="$tmp/venv/bin/python"
  if [ "$reuse" = 1 ]; then
    site="$("$py" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
    vsite="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$site" > "$vsite/zz_borrowed_site.pth"  # after the venv's own packages
    "$vpy" -m pip install -q --no-deps "$wheel"
  else
    "$vpy" -m pip install -q "$wheel"
  fi
  # PATH without any folder holding nvcc, no CUDA_HOME: what a user's login node looks like.
  clean_path=""
  IFS=: read -r -a dirs <<< "$PATH"
  for d in "${dirs[@]}"; do
    [ -n "$d" ] && [ ! -x "$d/nvcc" ] && clean_path="${clean_path:+$clean_path:}$d"
  done
  cd "$tmp"  # not the source tree: import the installed package
  env -u CUDA_HOME -u CUDA_PATH PATH="$clean_path" BW_EXPECT_ARCHS="$archs" BW_VENV="$tmp/venv" "$vpy" - <<'EOF'
import os, shutil
assert shutil.which("nvcc") is None, "nvcc is still on PATH"
import torch
import basewise
from basewise import ops
assert os.path.realpath(basewise.__file__).startswith(os.path.realpath(os.environ["BW_VENV"])), basewise.__file__
info = basewise.build_info()
want = os.environ["BW_EXPECT_ARCHS"].replace(";", ",")
assert info["cuda"] and info["cuda_archs"] == want, info
model = torch.nn.Sequential(torch.nn.Conv1d(4, 2, 3), torch.nn.AdaptiveAvgPool1d(1))
out = basewise.ISM_predict(["ACGTACGTAC"], model, return_df=False, engine="full")
assert out.shape == (1, 10, 4, 2, 1), out.shape
gpu = "no GPU here"
if torch.cuda.is_available():
    reason = ops.fallback_reason(0)
    gpu = f"GPU {torch.cuda.get_device_name(0)}: " + ("native kernels" if reason is None else f"fallback ({reason})")
print(f"build_wheel.sh: fresh venv without nvcc: import OK, torch {torch.__version__}, "
      f"cuda_archs {info['cuda_archs']}, CUDA runtime {info['cuda_runtime_version']}, ISM OK; {gpu}")
EOF
fi
echo "build_wheel.sh: wheel: $wheel (${size_mb} MB). Its tag is linux_*: for PyPI, run 'auditwheel repair' on it (vendors libgomp) first."

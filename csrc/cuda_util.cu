// Runtime queries for build_info / device_count.
#include "cuda_util.cuh"

namespace basewise {

namespace {
// Compiled for the same architectures as every other kernel of the module: if the runtime finds
// an image of this one for a GPU, it finds images of all of them.
__global__ void probe_kernel() {}
}  // namespace

std::string cuda_kernel_problem(int device) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("the CUDA runtime basewise was built with cannot use this driver or GPU (") +
           cudaGetErrorString(err) + ")";
  }
  if (device < 0 || device >= n)
    return "CUDA device " + std::to_string(device) + " is not visible to basewise's CUDA runtime";
  int cur = -1;
  if (cudaGetDevice(&cur) != cudaSuccess) {
    cudaGetLastError();
    cur = -1;
  }
  if (cur != device && cudaSetDevice(device) != cudaSuccess) {
    cudaGetLastError();
    return "cannot select CUDA device " + std::to_string(device);
  }
  cudaFuncAttributes attr;
  err = cudaFuncGetAttributes(&attr, probe_kernel);  // no image for this GPU: an error, no launch
  if (err != cudaSuccess) cudaGetLastError();  // not sticky; clear it
  if (cur >= 0 && cur != device) cudaSetDevice(cur);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  return "";
}

int cuda_runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace basewise

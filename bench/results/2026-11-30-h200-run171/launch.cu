// Microbenchmark: the fixed costs of the cuda Sinkhorn's launch shape on this GPU, each under a CUDA
// graph of 20 launches (or 20 steps) replayed 50 times.
//   1. an empty kernel, 64 blocks x 512 threads, with no cluster, clusters of 8, and clusters of 8
//      that do one cluster.sync();
//   2. a fill of 16K 8-byte words (the words buffer) followed by the clustered kernel;
//   3. in-kernel rounds (1000 per launch) of: cluster.sync() alone; a global exchange among the 8
//      blocks of a column band (tagged word store, poll for the 7 peers' words); both.
//   nvcc -O3 -arch=sm_90 -std=c++17 launch.cu -o launch && ./launch
#include <cooperative_groups.h>
#include <cstdio>
namespace cg = cooperative_groups;
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

__global__ void empty_kernel(int) {}
__global__ void cluster_sync_kernel(int) { cg::this_cluster().sync(); }
__global__ void fill_kernel(unsigned long long* w, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) w[i] = 0;
}

// rounds of exchange. mode bit 0: cluster.sync each round; bit 1: global column exchange each round.
// block (p, q) = (blockIdx.x / 8, blockIdx.x % 8); column band q: the 8 blocks with that q.
__global__ void rounds_kernel(unsigned long long* words, int rounds, int mode) {
  cg::cluster_group cluster = cg::this_cluster();
  const int p = blockIdx.x / 8, q = blockIdx.x % 8;
  const int t = threadIdx.x;
  float acc = 0.f;
  for (int r = 1; r <= rounds; ++r) {
    if (mode & 1) cluster.sync();
    if (mode & 2) {
      unsigned long long* copy = words + (r % 2) * 8 * 8 * 128;
      if (t < 128) {
        unsigned long long w = (static_cast<unsigned long long>(r) << 32) | __float_as_uint(1.f);
        asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(copy + (p * 8 + q) * 128 + t), "l"(w) : "memory");
      }
      // 512 threads: group g = t / 128 polls rows g, g + 4
      const int c = t % 128, g = t / 128;
      for (int pp = g; pp < 8; pp += 4) {
        unsigned long long w;
        do {
          asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];" : "=l"(w) : "l"(copy + (pp * 8 + q) * 128 + c) : "memory");
        } while ((w >> 32) != static_cast<unsigned long long>(r));
        acc += __uint_as_float(static_cast<unsigned>(w));
      }
      __syncthreads();
    }
  }
  if (acc == -1.f) words[0] = 1;
  cluster.sync();
}

template <typename F>
float graph_us(F launch, int per_graph, int reps = 50) {
  cudaStream_t s;
  cudaStreamCreate(&s);
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  launch(s);
  cudaStreamSynchronize(s);
  cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
  for (int i = 0; i < per_graph; ++i) launch(s);
  cudaStreamEndCapture(s, &graph);
  cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphLaunch(exec, s);
  cudaStreamSynchronize(s);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  float best = 1e30f;
  for (int run = 0; run < 5; ++run) {
    cudaEventRecord(a, s);
    for (int i = 0; i < reps; ++i) cudaGraphLaunch(exec, s);
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    best = fminf(best, ms * 1e3f / (reps * per_graph));
  }
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) printf("error: %s\n", cudaGetErrorString(e));
  return best;
}

template <typename K, typename... Args>
void launch_clustered(cudaStream_t s, K kernel, int blocks, int threads, int cluster, Args... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(threads);
  config.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  config.attrs = attr;
  config.numAttrs = cluster > 1 ? 1 : 0;
  cudaLaunchKernelEx(&config, kernel, args...);
}

int main() {
  unsigned long long* words;
  CK(cudaMalloc(&words, 16384 * 8 * 4));
  printf("per launch (us), 20 launches a graph:\n");
  printf("  empty, 64 x 512, no cluster        %6.2f\n",
         graph_us([&](cudaStream_t s) { launch_clustered(s, empty_kernel, 64, 512, 1, 0); }, 20));
  printf("  empty, 64 x 512, clusters of 8     %6.2f\n",
         graph_us([&](cudaStream_t s) { launch_clustered(s, empty_kernel, 64, 512, 8, 0); }, 20));
  printf("  cluster.sync, 64 x 512, clusters 8 %6.2f\n",
         graph_us([&](cudaStream_t s) { launch_clustered(s, cluster_sync_kernel, 64, 512, 8, 0); }, 20));
  printf("  empty, 128 x 512, no cluster       %6.2f\n",
         graph_us([&](cudaStream_t s) { launch_clustered(s, empty_kernel, 128, 512, 1, 0); }, 20));
  printf("  fill 16K words                     %6.2f\n",
         graph_us([&](cudaStream_t s) { fill_kernel<<<64, 256, 0, s>>>(words, 16384); }, 20));
  printf("  fill 16K words + cluster.sync kern %6.2f\n", graph_us([&](cudaStream_t s) {
           fill_kernel<<<64, 256, 0, s>>>(words, 16384);
           launch_clustered(s, cluster_sync_kernel, 64, 512, 8, 0);
         }, 20));
  printf("  memsetAsync 128 KB + cluster kern  %6.2f\n", graph_us([&](cudaStream_t s) {
           cudaMemsetAsync(words, 0, 16384 * 8, s);
           launch_clustered(s, cluster_sync_kernel, 64, 512, 8, 0);
         }, 20));
  const int rounds = 1000;
  const char* names[] = {"", "cluster.sync", "global column exchange", "both"};
  for (int mode = 1; mode <= 3; ++mode) {
    // tags restart each launch: zero the words first
    float us = graph_us([&](cudaStream_t s) {
      cudaMemsetAsync(words, 0, 2 * 8 * 8 * 128 * 8, s);
      launch_clustered(s, rounds_kernel, 64, 512, 8, words, rounds, mode);
    }, 1, 10);
    printf("  per round, %-24s %6.3f us\n", names[mode], us / rounds);
  }
  return 0;
}

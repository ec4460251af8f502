/*
 * cuBLAS on the fake libcuda TEST DOUBLE (an experiment, not a test: run_library_experiments.sh).
 * usage: cublas_calls LIBCUDART LIBCUBLAS
 * The runtime and cuBLAS (with the runtimes statically linked into libcublas and libcublasLt)
 * start through cudacompat; level-1 routines load their kernel libraries and launch. Kernels do
 * not compute on the double, so results are not checked; the trace (FAKE_CUDA_TRACE) and the
 * call counters show what the libraries asked of the driver.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#define SYM(lib, name) dlsym(lib, name)

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    void *rt = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL), *blas = dlopen(argv[2], RTLD_NOW | RTLD_GLOBAL);
    if (!rt || !blas) {
        printf("dlopen: %s\n", dlerror());
        return 1;
    }
    int (*cuda_malloc)(void **, size_t) = (int (*)(void **, size_t))SYM(rt, "cudaMalloc");
    int (*cuda_memcpy)(void *, const void *, size_t, int) = (int (*)(void *, const void *, size_t, int))SYM(rt, "cudaMemcpy");
    int (*create)(void **) = (int (*)(void **))SYM(blas, "cublasCreate_v2");
    int (*destroy)(void *) = (int (*)(void *))SYM(blas, "cublasDestroy_v2");
    int (*saxpy)(void *, int, const float *, const float *, int, float *, int) =
        (int (*)(void *, int, const float *, const float *, int, float *, int))SYM(blas, "cublasSaxpy_v2");
    int (*sscal)(void *, int, const float *, float *, int) = (int (*)(void *, int, const float *, float *, int))SYM(blas, "cublasSscal_v2");
    int (*sdot)(void *, int, const float *, int, const float *, int, float *) =
        (int (*)(void *, int, const float *, int, const float *, int, float *))SYM(blas, "cublasSdot_v2");
    int (*sgemm)(void *, int, int, int, int, int, const float *, const float *, int, const float *, int, const float *,
                 float *, int) = (int (*)(void *, int, int, int, int, int, const float *, const float *, int,
                                          const float *, int, const float *, float *, int))SYM(blas, "cublasSgemm_v2");
    void *h = NULL;
    int rc = create(&h);
    printf("cublasCreate_v2 %d\n", rc);
    if (rc)
        return 1;
    const int n = 1 << 16;
    float *x = NULL, *y = NULL, one = 1, two = 2, zero = 0, r = 0;
    float *host = malloc(n * sizeof *host);
    for (int i = 0; i < n; i++)
        host[i] = 1;
    cuda_malloc((void **)&x, n * sizeof *x);
    cuda_malloc((void **)&y, n * sizeof *y);
    cuda_memcpy(x, host, n * sizeof *x, 1);
    cuda_memcpy(y, host, n * sizeof *y, 1);
    printf("cublasSaxpy_v2 %d\n", saxpy(h, n, &two, x, 1, y, 1));
    printf("cublasSscal_v2 %d\n", sscal(h, n, &two, x, 1));
    printf("cublasSdot_v2 %d\n", sdot(h, n, x, 1, y, 1, &r));
    printf("cublasSgemm_v2 %d\n", sgemm(h, 0, 0, 256, 256, 256, &one, x, 256, y, 256, &zero, x, 256));
    printf("cublasDestroy_v2 %d\n", destroy(h));
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    long (*calls)(const char *) = cuda ? (long (*)(const char *))dlsym(cuda, "fake_cuda_calls") : NULL;
    static const char *const names[] = {"cuLibraryLoadData", "cuModuleGetFunction", "cuModuleGetGlobal_v2",
                                        "cuLaunchKernel", "cuFuncGetAttribute", "cuMemAlloc_v2", "cuEventCreate"};
    for (size_t i = 0; calls && i < sizeof names / sizeof names[0]; i++)
        printf("calls %s %ld\n", names[i], calls(names[i]));
    free(host);
    return 0;
}

/*
 * cudacompat: cuGetErrorName / cuGetErrorString answered locally (the remoting client needs no
 * round trip for them). Names and descriptions come from cuda.h (gen_errors.py); an unknown code
 * is CUDA_ERROR_INVALID_VALUE with *str = NULL, as the driver documents.
 */
#include "cc_errors_table.h"
#include "cc_internal.h"

static const struct cc_error_row *find(CUresult error)
{
    size_t lo = 0, hi = CC_ERROR_NROWS;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cc_error_rows[mid].value < (int)error)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < CC_ERROR_NROWS && cc_error_rows[lo].value == (int)error ? &cc_error_rows[lo] : NULL;
}

CUresult cudacompat_error_name(CUresult error, const char **str)
{
    if (!str)
        return CUDA_ERROR_INVALID_VALUE;
    const struct cc_error_row *r = find(error);
    *str = r ? r->name : NULL;
    return r ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cudacompat_error_string(CUresult error, const char **str)
{
    if (!str)
        return CUDA_ERROR_INVALID_VALUE;
    const struct cc_error_row *r = find(error);
    *str = r ? r->description : NULL;
    return r ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

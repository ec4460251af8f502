/*
 * cudacompat: the cuGetProcAddress(_v2) contract.
 *
 * The runtime asks for a base name ("cuMemcpyHtoD"), the CUDA version whose signature it was
 * built against, and flags (CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM for the _ptds/_ptsz
 * export). The generated table (gen_procaddr.py, from NVIDIA's cudaTypedefs.h) lists every
 * signature version of every entry point with its exported name; the answer is the newest
 * signature not newer than the asked version, per-thread variant first when flags ask for it.
 */
#include "cc_internal.h"
#include "cc_procaddr_table.h"

#include <string.h>

/* first row of name, or CC_PROC_NROWS */
static size_t first_row(const char *name)
{
    size_t lo = 0, hi = CC_PROC_NROWS;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(cc_proc_rows[mid].name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < CC_PROC_NROWS && strcmp(cc_proc_rows[lo].name, name) == 0 ? lo : CC_PROC_NROWS;
}

/* newest row of (name, per_thread) with version <= cuda_version; NULL if none.
 * *exists_newer is set when rows exist but all are newer than asked. */
static const struct cc_proc_row *pick(size_t first, int per_thread, int cuda_version, int *exists_newer)
{
    const struct cc_proc_row *best = NULL;
    const char *name = cc_proc_rows[first].name;
    for (size_t i = first; i < CC_PROC_NROWS && strcmp(cc_proc_rows[i].name, name) == 0; i++) {
        if (cc_proc_rows[i].per_thread != per_thread)
            continue;
        if (cc_proc_rows[i].version <= cuda_version)
            best = &cc_proc_rows[i]; /* rows are sorted by version */
        else
            *exists_newer = 1;
    }
    return best;
}

static CUresult answer(void **pfn, void *fn, CUdriverProcAddressQueryResult *status,
                       CUdriverProcAddressQueryResult why_not)
{
    *pfn = fn;
    if (status)
        *status = fn ? CU_GET_PROC_ADDRESS_SUCCESS : why_not;
    return fn ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

CUresult cudacompat_get_proc_address(const char *symbol, void **pfn, int cuda_version, cuuint64_t flags,
                                     CUdriverProcAddressQueryResult *status)
{
    const struct cudacompat_backend *b = cc_backend();
    if (!symbol || !pfn)
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    if (!b)
        return answer(pfn, NULL, status, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    size_t first = first_row(symbol);
    if (first == CC_PROC_NROWS) {
        /* not in the headers this library was built from (a newer CUDA): exact export name */
        void *fn = symbol[0] ? b->lookup(symbol) : NULL;
        if (!fn)
            cc_tracef("procaddr miss %s@%d flags %llu", symbol, cuda_version, (unsigned long long)flags);
        return answer(pfn, fn, status, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    }
    int newer = 0;
    const struct cc_proc_row *row = NULL;
    if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)
        row = pick(first, 1, cuda_version, &newer);
    if (!row)
        row = pick(first, 0, cuda_version, &newer);
    if (!row) {
        cc_tracef("procaddr %s@%d: only newer versions exist", symbol, cuda_version);
        return answer(pfn, NULL, status, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
    }
    void *fn = b->lookup(row->export_name);
    if (!fn)
        cc_tracef("procaddr miss %s@%d flags %llu (export %s)", symbol, cuda_version, (unsigned long long)flags,
                  row->export_name);
    return answer(pfn, fn, status, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
}

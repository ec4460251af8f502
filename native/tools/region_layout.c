/* Prints the binary layout the C compiler gives every struct of xpushim_layout.def, as JSON
 * ("sizeof.<struct>": [0, size], "<struct>.<field>": [offset, size]). The Python mirror,
 * generated from the same definition, is checked against this output
 * (tests/agent/test_shim_region.py). */
#include <stddef.h>
#include <stdio.h>
#include "xpushim_region.h"

static int g_first = 1;
static void entry(const char *a, const char *b, size_t off, size_t size)
{
    printf("%s\n  \"%s%s%s\": [%zu, %zu]", g_first ? "{" : ",", a, b[0] ? "." : "", b, off, size);
    g_first = 0;
}

int main(void)
{
#define XPU_STRUCT(n, sz)                                                                              \
    {                                                                                                  \
        typedef struct n T_;                                                                           \
        const char *name_ = #n;                                                                        \
        char s_[96];                                                                                   \
        snprintf(s_, sizeof s_, "sizeof.%s", name_);                                                   \
        entry(s_, "", 0, sizeof(T_));
#define XPU_FIELD(t, f) entry(name_, #f, offsetof(T_, f), sizeof(((T_ *)0)->f));
#define XPU_ARRAY(t, f, c) entry(name_, #f, offsetof(T_, f), sizeof(((T_ *)0)->f));
#define XPU_NESTED(t, f, c) entry(name_, #f, offsetof(T_, f), sizeof(((T_ *)0)->f));
#define XPU_MEMBER(t, f) entry(name_, #f, offsetof(T_, f), sizeof(((T_ *)0)->f));
#define XPU_END(n) }
#include "xpushim_layout.def"
    printf("\n}\n");
    return 0;
}

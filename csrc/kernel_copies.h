/* The specialised copies of a row function, and the dispatch among them.
 *
 * Each flag combination (exact, reverse) is a copy of its own with the flags
 * folded in: a run-time reverse test per step cost 7-17 % of the plain
 * rates. Each copy is a function of its own (QK_COPY): inlined side by side
 * into one dispatcher, GCC allocated registers over all of them at once and
 * kept the hot loops' inputs and sums in stack slots (-10 %, u16 x f32,
 * AVX-512, Zen 4). copy_NAME_plain .. _exact_reverse take the same
 * parameters as their dispatcher, whose names ROW(F) uses.
 *
 * Each family gives the row kinds the tools produce copies of their own
 * (u16 x f32; logits of one dtype on both sides); other dtypes and strides
 * go through copies that test them and the reverse flag at run time
 * (NAME_any, QK_MODE_COPIES), for a copy per dtype pair and flag combination
 * would triple the build for pairs no tool writes.
 *
 * QK_FEW_COPIES keeps one copy per mode, the reverse flag tested at run
 * time, and no dtype copies: the same code in a fraction of the compile.
 * The sanitizer build defines it (the code instrumented once per copy takes
 * cc1 past 25 minutes), and so does the portable build on x86-64, which runs
 * only on CPUs without AVX2. */
#ifndef QUANTKL_KERNEL_COPIES_H
#define QUANTKL_KERNEL_COPIES_H

#define QK_COPY(NAME, PARAMS, BODY)                                                                \
    static __attribute__((noinline)) void NAME PARAMS { BODY; }
/* One copy per mode, the reverse flag tested at run time: the copies that
 * test their dtypes and strides at run time too (NAME_any), and every copy
 * under QK_FEW_COPIES. */
#define QK_MODE_COPIES(NAME, PARAMS, ROW)                                                          \
    QK_COPY(copy_##NAME##_plain, PARAMS, ROW(mode & QK_REVERSE))                                   \
    QK_COPY(copy_##NAME##_exact, PARAMS, ROW(QK_EXACT | (mode & QK_REVERSE)))
#define QK_BY_MODE(NAME, ARGS)                                                                     \
    do {                                                                                           \
        if (mode & QK_EXACT)                                                                       \
            copy_##NAME##_exact ARGS;                                                              \
        else                                                                                       \
            copy_##NAME##_plain ARGS;                                                              \
    } while (0)
#ifdef QK_FEW_COPIES
#define QK_FLAG_COPIES QK_MODE_COPIES
#define QK_BY_FLAGS QK_BY_MODE
#else
#define QK_FLAG_COPIES(NAME, PARAMS, ROW)                                                          \
    QK_COPY(copy_##NAME##_plain, PARAMS, ROW(0))                                                   \
    QK_COPY(copy_##NAME##_exact, PARAMS, ROW(QK_EXACT))                                            \
    QK_COPY(copy_##NAME##_reverse, PARAMS, ROW(QK_REVERSE))                                        \
    QK_COPY(copy_##NAME##_exact_reverse, PARAMS, ROW(QK_EXACT | QK_REVERSE))
#define QK_BY_FLAGS(NAME, ARGS)                                                                    \
    do {                                                                                           \
        switch (mode & (QK_EXACT | QK_REVERSE)) {                                                  \
        case 0: copy_##NAME##_plain ARGS; break;                                                   \
        case QK_EXACT: copy_##NAME##_exact ARGS; break;                                            \
        case QK_REVERSE: copy_##NAME##_reverse ARGS; break;                                        \
        default: copy_##NAME##_exact_reverse ARGS; break;                                          \
        }                                                                                          \
    } while (0)
#endif

/* Jensen-Shannon (opt-in, an exp, an expm1 and a log per entry): one copy per
 * mode, for contiguous rows, with the dtypes and reverse flag tested at run
 * time, for a copy per dtype and flag combination would double the build. Testing the
 * mode at run time too cost 40 % of the JS rate (510 vs 875 M/s, u16 x f32,
 * one thread); QK_FEW_COPIES takes that one copy. */
#ifdef QK_FEW_COPIES
#define QK_JS_COPIES(NAME, PARAMS, ROW) QK_COPY(copy_##NAME##_js, PARAMS, ROW(mode))
#define QK_BY_MODE_JS(NAME, ARGS) copy_##NAME##_js ARGS
#else
#define QK_JS_COPIES(NAME, PARAMS, ROW)                                                            \
    QK_COPY(copy_##NAME##_js, PARAMS, ROW(QK_JS | (mode & QK_REVERSE)))                            \
    QK_COPY(copy_##NAME##_js_exact, PARAMS, ROW(QK_JS | QK_EXACT | (mode & QK_REVERSE)))
#define QK_BY_MODE_JS(NAME, ARGS)                                                                  \
    do {                                                                                           \
        if (mode & QK_EXACT)                                                                       \
            copy_##NAME##_js_exact ARGS;                                                           \
        else                                                                                       \
            copy_##NAME##_js ARGS;                                                                 \
    } while (0)
#endif

/* Strided rows asking for Jensen-Shannon: one copy with the mode, dtypes
 * and strides all tested at run time (the JS copies above read contiguous
 * rows, whose rate a run-time stride would cut by a quarter). */
#define QK_JS_STRIDED_COPY(NAME, PARAMS, ROW)                                                      \
    QK_COPY(copy_##NAME##_js_strided, PARAMS, ROW(mode))

#endif

# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Thin Cython layer over csrc/: loops over rows with prange, GIL released.

Inputs arrive here already checked by quantkl.arrays (dtypes, shapes, token
range); these functions only move pointers and strides to the C row kernels
and collect their per-row outputs into numpy arrays.
"""
import numpy as np
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.string cimport memcpy

cdef extern from "quantkl.h" nogil:
    enum: QK_TOPK_MAX
    enum qk_dtype:
        QK_F32, QK_F16, QK_BF16
    enum qk_mode:
        QK_LLAMA, QK_EXACT
    enum qk_status:
        QK_P_NONFINITE, QK_Q_NONFINITE, QK_P_EMPTY, QK_Q_EMPTY, QK_P_BAD_HEADER,
        QK_Q_BAD_HEADER, QK_P_CORRUPT, QK_Q_CORRUPT, QK_READ_FAULT
    ctypedef struct qk_row:
        double kld
        double nll_p
        double nll_q
        float nll_q_llama
        int64_t top_p
        int64_t top_q
        int32_t rank
        int32_t status
        double p_top
        uint8_t overlap[QK_TOPK_MAX]
        double rkl
        double js
    int QK_REVERSE
    int QK_JS
    void qk_score_llama_logits(const uint16_t *p_row, const void *q, int q_dtype,
                               Py_ssize_t q_stride, int64_t n_vocab, int64_t tok, int mode,
                               qk_row *out)
    void qk_score_logits_logits(const void *p, int p_dtype, Py_ssize_t p_stride, const void *q,
                                int q_dtype, Py_ssize_t q_stride, int64_t n_vocab, int64_t tok,
                                int mode, qk_row *out)
    void qk_score_llama_llama(const uint16_t *p_row, const uint16_t *q_row, int64_t n_vocab,
                              int64_t tok, int mode, qk_row *out)
    int qk_encode_llama_row(const float *x, Py_ssize_t stride, int64_t n_vocab, int64_t tok,
                            uint16_t *row, double *nll)
    ctypedef struct qk_sparse_header:
        pass
    ctypedef struct qk_bounds:
        double kld_hi
        double rkl_hi
        double js_hi
    void qk_score_sparse_logits(const qk_sparse_header *h, const int32_t *idx, const float *x,
                                const void *q, int q_dtype, Py_ssize_t q_stride, int64_t n_vocab,
                                int64_t tok, int mode, qk_row *out, qk_bounds *bounds)
    void qk_score_sparse_sparse(const qk_sparse_header *hp, const int32_t *ip, const float *xp,
                                const qk_sparse_header *hq, const int32_t *iq, const float *xq,
                                int64_t n_vocab, int64_t tok, int mode, qk_row *out,
                                qk_bounds *bounds)
    int qk_sparse_measure(const float *x, Py_ssize_t stride, int64_t n_vocab, int64_t tok,
                          qk_sparse_header *h)
    void qk_sparse_fill(const float *x, Py_ssize_t stride, int64_t n_vocab,
                        const qk_sparse_header *h, int32_t *idx, float *val)

cdef extern from "llama_loop.h" nogil:
    double qk_llama_loop_kld(const uint16_t *base_row, const float *logits, int64_t n_vocab)
    void qk_llama_loop_encode(const float *logits, int64_t n_vocab, uint16_t *row)

cdef extern from "read_loop.h" nogil:
    uint64_t qk_read_loop(const void *row, int64_t bytes)

cdef extern from "guard.h" nogil:
    int qk_guard_install()

cdef extern from "dispatch.h" nogil:
    int qk_path_count()
    const char *qk_path_name(int i)
    int qk_path_supported(int i)
    int qk_select_path(int i)
    const char *qk_current_path()

# The C<->Python contract (csrc/quantkl.h), defined there once: Python reads
# these names, never the numbers.
TOPK_MAX = QK_TOPK_MAX
REVERSE = QK_REVERSE
JS = QK_JS
DTYPES = {"float32": QK_F32, "float16": QK_F16, "bfloat16": QK_BF16}
MODES = {"llama": QK_LLAMA, "exact": QK_EXACT}
STATUS = {"P_NONFINITE": QK_P_NONFINITE, "Q_NONFINITE": QK_Q_NONFINITE,
          "P_EMPTY": QK_P_EMPTY, "Q_EMPTY": QK_Q_EMPTY, "P_BAD_HEADER": QK_P_BAD_HEADER,
          "Q_BAD_HEADER": QK_Q_BAD_HEADER, "P_CORRUPT": QK_P_CORRUPT,
          "Q_CORRUPT": QK_Q_CORRUPT, "READ_FAULT": QK_READ_FAULT}

# A dump truncated by another process while it is read ends the row with a
# status (QK_READ_FAULT) instead of killing the process with SIGBUS: each
# call below first puts the guard's handler in front (faulthandler, enabled
# after quantkl was imported, would otherwise see the fault first).

ctypedef fused logit_t:
    float
    uint16_t

ctypedef fused other_t:
    float
    uint16_t


cdef class RowScores:
    """Per-row outputs of one kernel call, as numpy arrays of length n_rows."""
    cdef public object kld, nll_p, nll_q, nll_q_llama, top_p, top_q, rank, status, p_top, overlap
    cdef public object rkl, js
    # a sparse base's intervals: the upper ends (kld, rkl, js are the lower);
    # None for the other kernels
    cdef public object kld_hi, rkl_hi, js_hi

    def __init__(self, Py_ssize_t n):
        self.kld = np.empty(n, np.float64)
        self.nll_p = np.empty(n, np.float64)
        self.nll_q = np.empty(n, np.float64)
        self.nll_q_llama = np.empty(n, np.float32)
        self.top_p = np.empty(n, np.int64)
        self.top_q = np.empty(n, np.int64)
        self.rank = np.empty(n, np.int32)
        self.status = np.empty(n, np.int32)
        self.p_top = np.empty(n, np.float64)
        self.overlap = np.empty((n, QK_TOPK_MAX), np.uint8)
        self.rkl = np.empty(n, np.float64)
        self.js = np.empty(n, np.float64)
        self.kld_hi = self.rkl_hi = self.js_hi = None


# prange makes variables assigned in its body thread-private, but not a struct
# written through a pointer; each row therefore gets its qk_row on the stack of
# these helpers, then copied out.
cdef struct Outputs:
    double *kld
    double *nll_p
    double *nll_q
    float *nll_q_llama
    int64_t *top_p
    int64_t *top_q
    int32_t *rank
    int32_t *status
    double *p_top
    uint8_t *overlap
    double *rkl
    double *js


cdef Outputs outputs_of(RowScores s):
    cdef double[::1] kld = s.kld, nll_p = s.nll_p, nll_q = s.nll_q
    cdef float[::1] nll_q_llama = s.nll_q_llama
    cdef int64_t[::1] top_p = s.top_p, top_q = s.top_q
    cdef int32_t[::1] rank = s.rank, status = s.status
    cdef double[::1] p_top = s.p_top
    cdef uint8_t[:, ::1] overlap = s.overlap
    cdef double[::1] rkl = s.rkl, js = s.js
    cdef Outputs o = Outputs(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                           NULL)
    if kld.shape[0] == 0:
        return o
    o.kld = &kld[0]
    o.nll_p = &nll_p[0]
    o.nll_q = &nll_q[0]
    o.nll_q_llama = &nll_q_llama[0]
    o.top_p = &top_p[0]
    o.top_q = &top_q[0]
    o.rank = &rank[0]
    o.status = &status[0]
    o.p_top = &p_top[0]
    o.overlap = &overlap[0, 0]
    o.rkl = &rkl[0]
    o.js = &js[0]
    return o


cdef inline void store(const qk_row *r, Outputs o, Py_ssize_t i) noexcept nogil:
    o.kld[i] = r.kld
    o.nll_p[i] = r.nll_p
    o.nll_q[i] = r.nll_q
    o.nll_q_llama[i] = r.nll_q_llama
    o.top_p[i] = r.top_p
    o.top_q[i] = r.top_q
    o.rank[i] = r.rank
    o.status[i] = r.status
    o.p_top[i] = r.p_top
    memcpy(&o.overlap[i * QK_TOPK_MAX], r.overlap, QK_TOPK_MAX)
    o.rkl[i] = r.rkl
    o.js[i] = r.js


cdef void row_llama_logits(const uint16_t *p, const void *q, int q_dtype, Py_ssize_t q_stride,
                           int64_t n_vocab, int64_t tok, int mode, Outputs o,
                           Py_ssize_t i) noexcept nogil:
    cdef qk_row r
    qk_score_llama_logits(p, q, q_dtype, q_stride, n_vocab, tok, mode, &r)
    store(&r, o, i)


cdef void row_logits_logits(const void *p, int p_dtype, Py_ssize_t p_stride, const void *q,
                            int q_dtype, Py_ssize_t q_stride, int64_t n_vocab, int64_t tok,
                            int mode, Outputs o, Py_ssize_t i) noexcept nogil:
    cdef qk_row r
    qk_score_logits_logits(p, p_dtype, p_stride, q, q_dtype, q_stride, n_vocab, tok, mode, &r)
    store(&r, o, i)


cdef void row_llama_llama(const uint16_t *p, const uint16_t *q, int64_t n_vocab, int64_t tok,
                          int mode, Outputs o, Py_ssize_t i) noexcept nogil:
    cdef qk_row r
    qk_score_llama_llama(p, q, n_vocab, tok, mode, &r)
    store(&r, o, i)


def score_llama_logits(const uint16_t[:, ::1] p, const logit_t[:, :] q, int q_dtype,
                       const int64_t[::1] tokens, int64_t n_vocab, int mode, int threads):
    cdef Py_ssize_t n = p.shape[0], i
    cdef Py_ssize_t q_stride = q.strides[1] // sizeof(logit_t)
    qk_guard_install()
    out = RowScores(n)
    cdef Outputs o = outputs_of(out)
    for i in prange(n, nogil=True, schedule="dynamic", num_threads=threads):
        row_llama_logits(&p[i, 0], &q[i, 0], q_dtype, q_stride, n_vocab, tokens[i], mode, o, i)
    return out


def score_logits_logits(const logit_t[:, :] p, int p_dtype, const other_t[:, :] q, int q_dtype,
                        const int64_t[::1] tokens, int64_t n_vocab, int mode, int threads):
    cdef Py_ssize_t n = p.shape[0], i
    cdef Py_ssize_t p_stride = p.strides[1] // sizeof(logit_t)
    cdef Py_ssize_t q_stride = q.strides[1] // sizeof(other_t)
    qk_guard_install()
    out = RowScores(n)
    cdef Outputs o = outputs_of(out)
    for i in prange(n, nogil=True, schedule="dynamic", num_threads=threads):
        row_logits_logits(&p[i, 0], p_dtype, p_stride, &q[i, 0], q_dtype, q_stride, n_vocab,
                          tokens[i], mode, o, i)
    return out


def score_llama_llama(const uint16_t[:, ::1] p, const uint16_t[:, ::1] q,
                      const int64_t[::1] tokens, int64_t n_vocab, int mode, int threads):
    cdef Py_ssize_t n = p.shape[0], i
    qk_guard_install()
    out = RowScores(n)
    cdef Outputs o = outputs_of(out)
    for i in prange(n, nogil=True, schedule="dynamic", num_threads=threads):
        row_llama_llama(&p[i, 0], &q[i, 0], n_vocab, tokens[i], mode, o, i)
    return out


def encode_llama_rows(const float[:, :] x, const int64_t[::1] tokens, uint16_t[:, ::1] rows,
                      int threads):
    """Fill rows (n, row width) from float32 logits x (n, n_vocab); returns (nll, status)."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef int64_t n_vocab = x.shape[1]
    cdef Py_ssize_t stride = x.strides[1] // sizeof(float)
    qk_guard_install()
    nll_arr = np.empty(n, np.float64)
    status_arr = np.empty(n, np.int32)
    cdef double[::1] nll = nll_arr
    cdef int32_t[::1] status = status_arr
    for i in prange(n, nogil=True, schedule="dynamic", num_threads=threads):
        status[i] = qk_encode_llama_row(&x[i, 0], stride, n_vocab, tokens[i], &rows[i, 0], &nll[i])
    return nll_arr, status_arr


# A sparse block (quantkl.sparse.SparseRows): headers as raw bytes (n, 40),
# each row's stored entries at [offsets[i], offsets[i + 1]) of idx and x.
cdef struct SparseBlock:
    const unsigned char *headers
    const int64_t *offsets
    const int32_t *idx
    const float *x


cdef SparseBlock sparse_block(const unsigned char[:, ::1] headers, const int64_t[::1] offsets,
                              const int32_t[::1] idx, const float[::1] x):
    cdef SparseBlock s
    s.headers = &headers[0, 0]
    s.offsets = &offsets[0]
    # a block may store no entry only if it has no rows; the kernels read none then
    s.idx = &idx[0] if idx.shape[0] else NULL
    s.x = &x[0] if x.shape[0] else NULL
    return s


cdef inline const qk_sparse_header *header_at(SparseBlock s, Py_ssize_t i) noexcept nogil:
    return <const qk_sparse_header *>(s.headers + 40 * i)


cdef struct BoundsOut:
    double *kld_hi
    double *rkl_hi
    double *js_hi


cdef BoundsOut bounds_of(RowScores s):
    s.kld_hi = np.empty(len(s.kld), np.float64)
    s.rkl_hi = np.empty(len(s.kld), np.float64)
    s.js_hi = np.empty(len(s.kld), np.float64)
    cdef double[::1] a = s.kld_hi, b = s.rkl_hi, c = s.js_hi
    return BoundsOut(&a[0], &b[0], &c[0])


cdef inline void store_bounds(const qk_bounds *b, BoundsOut o, Py_ssize_t i) noexcept nogil:
    o.kld_hi[i] = b.kld_hi
    o.rkl_hi[i] = b.rkl_hi
    o.js_hi[i] = b.js_hi


cdef void row_sparse_logits(SparseBlock p, const void *q, int q_dtype, Py_ssize_t q_stride,
                            int64_t n_vocab, int64_t tok, int mode, Outputs o, BoundsOut bo,
                            Py_ssize_t i) noexcept nogil:
    cdef qk_row r
    cdef qk_bounds b
    cdef int64_t at = p.offsets[i]
    qk_score_sparse_logits(header_at(p, i), p.idx + at, p.x + at, q, q_dtype, q_stride, n_vocab,
                           tok, mode, &r, &b)
    store(&r, o, i)
    store_bounds(&b, bo, i)


cdef void row_sparse_sparse(SparseBlock p, SparseBlock q, int64_t n_vocab, int64_t tok, int mode,
                            Outputs o, BoundsOut bo, Py_ssize_t i) noexcept nogil:
    cdef qk_row r
    cdef qk_bounds b
    cdef int64_t ap = p.offsets[i], aq = q.offsets[i]
    qk_score_sparse_sparse(header_at(p, i), p.idx + ap, p.x + ap, header_at(q, i), q.idx + aq,
                           q.x + aq, n_vocab, tok, mode, &r, &b)
    store(&r, o, i)
    store_bounds(&b, bo, i)


def score_sparse_logits(const unsigned char[:, ::1] headers, const int64_t[::1] offsets,
                        const int32_t[::1] idx, const float[::1] x, const logit_t[:, :] q,
                        int q_dtype, const int64_t[::1] tokens, int64_t n_vocab, int mode,
                        int threads):
    cdef Py_ssize_t n = headers.shape[0], i
    cdef Py_ssize_t q_stride = q.strides[1] // sizeof(logit_t)
    cdef SparseBlock p = sparse_block(headers, offsets, idx, x)
    qk_guard_install()
    out = RowScores(n)
    cdef Outputs o = outputs_of(out)
    cdef BoundsOut bo = bounds_of(out)
    for i in prange(n, nogil=True, schedule="dynamic", num_threads=threads):
        row_sparse_logits(p, &q[i, 0], q_dtype, q_stride, n_vocab, tokens[i], mode, o, bo, i)
    return out


def score_sparse_sparse(const unsigned char[:, ::1] p_headers, const int64_t[::1] p_offsets,
                        const int32_t[::1] p_idx, const float[::1] p_x,
                        const unsigned char[:, ::1] q_headers, const int64_t[::1] q_offsets,
                        const int32_t[::1] q_idx, const float[::1] q_x,
                        const int64_t[::1] tokens, int64_t n_vocab, int mode, int threads):
    cdef Py_ssize_t n = p_headers.shape[0], i
    cdef SparseBlock p = sparse_block(p_headers, p_offsets, p_idx, p_x)
    cdef SparseBlock q = sparse_block(q_headers, q_offsets, q_idx, q_x)
    qk_guard_install()
    out = RowScores(n)
    cdef Outputs o = outputs_of(out)
    cdef BoundsOut bo = bounds_of(out)
    for i in prange(n, nogil=True, schedule="dynamic", num_threads=threads):
        row_sparse_sparse(p, q, n_vocab, tokens[i], mode, o, bo, i)
    return out


def sparse_measure(const float[:, :] x, const int64_t[::1] tokens, unsigned char[:, ::1] headers,
                   int threads):
    """Fill headers (n, 40) of sparse rows from float32 logits x; returns the status per row."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef int64_t n_vocab = x.shape[1]
    cdef Py_ssize_t stride = x.strides[1] // sizeof(float)
    qk_guard_install()
    status_arr = np.empty(n, np.int32)
    cdef int32_t[::1] status = status_arr
    for i in prange(n, nogil=True, schedule="dynamic", num_threads=threads):
        status[i] = qk_sparse_measure(&x[i, 0], stride, n_vocab, tokens[i],
                                      <qk_sparse_header *>&headers[i, 0])
    return status_arr


def sparse_fill(const float[:, :] x, const unsigned char[:, ::1] headers,
                const int64_t[::1] offsets, int32_t[::1] idx, float[::1] val, int threads):
    """Each row's stored indices and logits at [offsets[i], offsets[i + 1])."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef int64_t n_vocab = x.shape[1]
    cdef Py_ssize_t stride = x.strides[1] // sizeof(float)
    qk_guard_install()
    for i in prange(n, nogil=True, schedule="dynamic", num_threads=threads):
        qk_sparse_fill(&x[i, 0], stride, n_vocab, <const qk_sparse_header *>&headers[i, 0],
                       &idx[offsets[i]], &val[offsets[i]])


def llama_loop_kld_rows(const uint16_t[:, ::1] base, const float[:, ::1] logits, int threads):
    """Per-row KLD by the transcription of llama.cpp's own loop (benchmarks' yardstick)."""
    cdef Py_ssize_t n = base.shape[0], i
    cdef int64_t n_vocab = logits.shape[1]
    out_arr = np.empty(n, np.float64)
    cdef double[::1] out = out_arr
    for i in prange(n, nogil=True, schedule="dynamic", num_threads=threads):
        out[i] = qk_llama_loop_kld(&base[i, 0], &logits[i, 0], n_vocab)
    return out_arr


def llama_loop_encode_rows(const float[:, ::1] logits, uint16_t[:, ::1] rows, int threads):
    """llama.cpp's own encoder loop, transcribed (benchmarks' yardstick)."""
    cdef Py_ssize_t n = logits.shape[0], i
    cdef int64_t n_vocab = logits.shape[1]
    for i in prange(n, nogil=True, schedule="dynamic", num_threads=threads):
        qk_llama_loop_encode(&logits[i, 0], n_vocab, &rows[i, 0])


def read_loop_rows(const uint8_t[:, ::1] rows, int threads):
    """Each row's 64-bit words XORed, read by nothing but loads (benchmarks' memory yardstick)."""
    cdef Py_ssize_t n = rows.shape[0], i
    cdef int64_t n_bytes = rows.shape[1]
    out_arr = np.empty(n, np.uint64)
    cdef uint64_t[::1] out = out_arr
    for i in prange(n, nogil=True, schedule="dynamic", num_threads=threads):
        out[i] = qk_read_loop(&rows[i, 0], n_bytes)
    return out_arr


def kernel_paths():
    """[(name, supported_on_this_cpu)] for every compiled kernel path."""
    return [(qk_path_name(i).decode(), bool(qk_path_supported(i))) for i in range(qk_path_count())]


def select_kernel(str name):
    names = [p for p, _ in kernel_paths()]
    if name not in names:
        raise ValueError(f"unknown kernel path {name!r}; compiled paths: {', '.join(names)}")
    if qk_select_path(names.index(name)) != 0:
        raise ValueError(f"kernel path {name!r} is not supported by this CPU")


def current_kernel():
    return qk_current_path().decode()

/* stentor's compiled decode runtime: the whole Llama forward pass and the sampler, in C.
 *
 * Why C: a 12M-parameter model does ~12M multiply-adds per token, a fraction of a millisecond of
 * arithmetic. What costs is per-op overhead (torch issues ~150 ops per token) and the bytes of
 * weights read per token. Here one call runs every layer of a step on a persistent pool of
 * threads (the output rows of each matrix are split across threads, a spin barrier between
 * stages), weights are read in place from the memory-mapped safetensors file (float32, or the
 * int8 rows of `stentor quantize` converted to float in registers), and sampling is one more call.
 *
 * Loaded with ctypes (stentor/infer/native.py); no Python C API. The AVX-512 paths are chosen at
 * run time when the CPU has them, so a build runs on any x86-64 (and elsewhere, with the portable
 * loops, which the compiler vectorizes for the build target).
 *
 * Arithmetic follows Hugging Face's LlamaForCausalLM in float32: RMSNorm x * rsqrt(mean(x^2) + eps)
 * * w, RoPE with HF's rotate_half, softmax attention with scale 1/sqrt(head_dim), SiLU MLP, tied or
 * untied output. Sums are accumulated in a different order, so logits agree to ~1e-5, not bit-exactly.
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ST_X86 1
#include <immintrin.h>
#define ST_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#endif
/* The loops of the forward pass and the sampler are compiled for AVX-512, AVX2 and the baseline,
 * and the loader picks the best the CPU has (GCC function multi-versioning, Linux). */
#if defined(ST_X86) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define ST_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ST_HOT
#endif

#define WT_F32 0
#define WT_I8 1

typedef struct {
    const void *w;      /* [rows, cols] row-major: float32 or int8 */
    const float *scale; /* [rows], int8 only: w_float = w * scale[row] */
    int32_t type, rows, cols, pad_;
} st_mat;

typedef struct {
    const float *attn_norm, *ffn_norm;
    st_mat q, k, v, o, gate, up, down;
} st_layer;

typedef struct {
    int32_t n_layers, hidden, n_heads, n_kv, head_dim, inter, vocab, max_pos;
    float eps;
    int32_t capacity; /* KV positions per slot */
    const st_layer *layers;
    const float *final_norm;
    st_mat embed, lm_head;
    const float *cos, *sin; /* [max_pos, head_dim / 2] */
    float *kv;              /* [slots, n_layers, 2, n_kv, capacity, head_dim] */
} st_model;

/* ------------------------------------------------------------------------------------------ */
/* dot products                                                                                 */

static float dot_f32_c(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0;
    for (int j = 0; j < 16; j++) s += acc[j];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static float dot_i8_c(const int8_t *a, const float *b, int n) {
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += (float)a[i + j] * b[i + j];
    float s = 0;
    for (int j = 0; j < 16; j++) s += acc[j];
    for (; i < n; i++) s += (float)a[i] * b[i];
    return s;
}

#ifdef ST_X86
ST_AVX512 static float dot_f32_avx512(const float *a, const float *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

ST_AVX512 static float dot_i8_avx512(const int8_t *a, const float *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(a + i))));
        __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(a + i + 16))));
        s0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, a + i)));
        s0 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* Four consecutive rows of a matrix times one vector: x is loaded once for all four, and two
 * accumulators per row keep eight FMA chains in flight (one chain per row waits on FMA latency).
 * `ahead` (or NULL) is the next block of rows: its lines are prefetched as this block is read,
 * spread over the loop, so the weight stream overlaps the arithmetic when several inputs reuse it. */
#define ST_PREFETCH4(ahead, cols, i)                                                        \
    do {                                                                                    \
        for (int k = 0; ahead && k < 4; k++) {                                              \
            _mm_prefetch((const char *)(ahead + (size_t)k * cols + (i)), _MM_HINT_T0);      \
            _mm_prefetch((const char *)(ahead + (size_t)k * cols + (i) + 16), _MM_HINT_T0); \
        }                                                                                   \
    } while (0)
#define ST_DOT4_BODY(LOAD)                                                                          \
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0; \
    int i = 0;                                                                                      \
    for (; i + 32 <= cols; i += 32) {                                                               \
        ST_PREFETCH4(ahead, cols, i);                                                               \
        __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);                       \
        a0 = _mm512_fmadd_ps(LOAD(w + i, 0xFFFF), x0, a0);                                          \
        a1 = _mm512_fmadd_ps(LOAD(w1 + i, 0xFFFF), x0, a1);                                         \
        a2 = _mm512_fmadd_ps(LOAD(w2 + i, 0xFFFF), x0, a2);                                         \
        a3 = _mm512_fmadd_ps(LOAD(w3 + i, 0xFFFF), x0, a3);                                         \
        a4 = _mm512_fmadd_ps(LOAD(w + i + 16, 0xFFFF), x1, a4);                                     \
        a5 = _mm512_fmadd_ps(LOAD(w1 + i + 16, 0xFFFF), x1, a5);                                    \
        a6 = _mm512_fmadd_ps(LOAD(w2 + i + 16, 0xFFFF), x1, a6);                                    \
        a7 = _mm512_fmadd_ps(LOAD(w3 + i + 16, 0xFFFF), x1, a7);                                    \
    }                                                                                               \
    for (; i < cols; i += 16) {                                                                     \
        __mmask16 m = cols - i >= 16 ? 0xFFFF : (__mmask16)((1u << (cols - i)) - 1);                \
        __m512 xv = _mm512_maskz_loadu_ps(m, x + i);                                                \
        a0 = _mm512_fmadd_ps(LOAD(w + i, m), xv, a0);                                               \
        a1 = _mm512_fmadd_ps(LOAD(w1 + i, m), xv, a1);                                              \
        a2 = _mm512_fmadd_ps(LOAD(w2 + i, m), xv, a2);                                              \
        a3 = _mm512_fmadd_ps(LOAD(w3 + i, m), xv, a3);                                              \
    }                                                                                               \
    out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a4));                                           \
    out[1] = _mm512_reduce_add_ps(_mm512_add_ps(a1, a5));                                           \
    out[2] = _mm512_reduce_add_ps(_mm512_add_ps(a2, a6));                                           \
    out[3] = _mm512_reduce_add_ps(_mm512_add_ps(a3, a7));

/* The same four rows times two vectors x and y (out[0..3] for x, out[4..7] for y): each weight is
 * loaded (and, for int8, converted) once for both, and each product is summed in the order
 * ST_DOT4_BODY sums it, so a row's result does not depend on whether it was paired. */
#define ST_DOT4X2_FMA(LOAD, k, wk, i, xv, yv)                                                        \
    do {                                                                                             \
        __m512 wv = LOAD(wk + (i), m);                                                               \
        a[k] = _mm512_fmadd_ps(wv, xv, a[k]);                                                        \
        b[k] = _mm512_fmadd_ps(wv, yv, b[k]);                                                        \
    } while (0)
#define ST_DOT4X2_BODY(LOAD)                                                                         \
    __m512 a[8], b[8];                                                                               \
    for (int k = 0; k < 8; k++) a[k] = b[k] = _mm512_setzero_ps();                                   \
    int i = 0;                                                                                       \
    __mmask16 m = 0xFFFF;                                                                            \
    for (; i + 32 <= cols; i += 32) {                                                                \
        ST_PREFETCH4(ahead, cols, i);                                                                \
        __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);                        \
        __m512 y0 = _mm512_loadu_ps(y + i), y1 = _mm512_loadu_ps(y + i + 16);                        \
        ST_DOT4X2_FMA(LOAD, 0, w, i, x0, y0);                                                        \
        ST_DOT4X2_FMA(LOAD, 1, w1, i, x0, y0);                                                       \
        ST_DOT4X2_FMA(LOAD, 2, w2, i, x0, y0);                                                       \
        ST_DOT4X2_FMA(LOAD, 3, w3, i, x0, y0);                                                       \
        ST_DOT4X2_FMA(LOAD, 4, w, i + 16, x1, y1);                                                   \
        ST_DOT4X2_FMA(LOAD, 5, w1, i + 16, x1, y1);                                                  \
        ST_DOT4X2_FMA(LOAD, 6, w2, i + 16, x1, y1);                                                  \
        ST_DOT4X2_FMA(LOAD, 7, w3, i + 16, x1, y1);                                                  \
    }                                                                                                \
    for (; i < cols; i += 16) {                                                                      \
        m = cols - i >= 16 ? 0xFFFF : (__mmask16)((1u << (cols - i)) - 1);                           \
        __m512 xv = _mm512_maskz_loadu_ps(m, x + i), yv = _mm512_maskz_loadu_ps(m, y + i);           \
        ST_DOT4X2_FMA(LOAD, 0, w, i, xv, yv);                                                        \
        ST_DOT4X2_FMA(LOAD, 1, w1, i, xv, yv);                                                       \
        ST_DOT4X2_FMA(LOAD, 2, w2, i, xv, yv);                                                       \
        ST_DOT4X2_FMA(LOAD, 3, w3, i, xv, yv);                                                       \
    }                                                                                                \
    for (int k = 0; k < 4; k++) {                                                                    \
        out[k] = _mm512_reduce_add_ps(_mm512_add_ps(a[k], a[k + 4]));                                \
        out[4 + k] = _mm512_reduce_add_ps(_mm512_add_ps(b[k], b[k + 4]));                            \
    }

/* The same four rows times four consecutive inputs x, x + cols, x + 2 cols, x + 3 cols (out[4q + k]:
 * input q, row k), two rows at a time: each weight is loaded (and, for int8, converted) once for four
 * inputs, and each (row, input) sums its products in ST_DOT4_BODY's order and accumulators. */
#define ST_DOT4X4_BODY(TYPE, LOAD)                                                                       \
    for (int h = 0; h < 4; h += 2) {                                                                 \
        const TYPE *wa = w + (size_t)h * cols, *wb = wa + cols;                                      \
        __m512 acc[2][4][2];                                                                         \
        for (int q = 0; q < 4; q++)                                                                  \
            acc[0][q][0] = acc[0][q][1] = acc[1][q][0] = acc[1][q][1] = _mm512_setzero_ps();         \
        int i = 0;                                                                                   \
        for (; i + 32 <= cols; i += 32) {                                                            \
            if (h == 0) ST_PREFETCH4(ahead, cols, i);                                                \
            __m512 a0 = LOAD(wa + i, 0xFFFF), a1 = LOAD(wa + i + 16, 0xFFFF);                        \
            __m512 b0 = LOAD(wb + i, 0xFFFF), b1 = LOAD(wb + i + 16, 0xFFFF);                        \
            for (int q = 0; q < 4; q++) {                                                            \
                __m512 x0 = _mm512_loadu_ps(x + (size_t)q * cols + i);                               \
                __m512 x1 = _mm512_loadu_ps(x + (size_t)q * cols + i + 16);                          \
                acc[0][q][0] = _mm512_fmadd_ps(a0, x0, acc[0][q][0]);                                \
                acc[0][q][1] = _mm512_fmadd_ps(a1, x1, acc[0][q][1]);                                \
                acc[1][q][0] = _mm512_fmadd_ps(b0, x0, acc[1][q][0]);                                \
                acc[1][q][1] = _mm512_fmadd_ps(b1, x1, acc[1][q][1]);                                \
            }                                                                                        \
        }                                                                                            \
        for (; i < cols; i += 16) {                                                                  \
            __mmask16 m = cols - i >= 16 ? 0xFFFF : (__mmask16)((1u << (cols - i)) - 1);             \
            __m512 a0 = LOAD(wa + i, m), b0 = LOAD(wb + i, m);                                       \
            for (int q = 0; q < 4; q++) {                                                            \
                __m512 xv = _mm512_maskz_loadu_ps(m, x + (size_t)q * cols + i);                      \
                acc[0][q][0] = _mm512_fmadd_ps(a0, xv, acc[0][q][0]);                                \
                acc[1][q][0] = _mm512_fmadd_ps(b0, xv, acc[1][q][0]);                                \
            }                                                                                        \
        }                                                                                            \
        for (int q = 0; q < 4; q++)                                                                  \
            for (int k = 0; k < 2; k++)                                                              \
                out[4 * q + h + k] = _mm512_reduce_add_ps(_mm512_add_ps(acc[k][q][0], acc[k][q][1])); \
    }

#define ST_LOAD_F32(p, m) _mm512_maskz_loadu_ps(m, p)
#define ST_LOAD_I8(p, m) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)))

ST_AVX512 static void dot4_f32_avx512(const float *w, int cols, const float *x, float *out, const float *ahead) {
    const float *w1 = w + cols, *w2 = w + 2 * (size_t)cols, *w3 = w + 3 * (size_t)cols;
    ST_DOT4_BODY(ST_LOAD_F32)
}

ST_AVX512 static void dot4_i8_avx512(const int8_t *w, int cols, const float *x, float *out, const int8_t *ahead) {
    const int8_t *w1 = w + cols, *w2 = w + 2 * (size_t)cols, *w3 = w + 3 * (size_t)cols;
    ST_DOT4_BODY(ST_LOAD_I8)
}

ST_AVX512 static void dot4x2_f32_avx512(const float *w, int cols, const float *x, const float *y, float *out,
                                        const float *ahead) {
    const float *w1 = w + cols, *w2 = w + 2 * (size_t)cols, *w3 = w + 3 * (size_t)cols;
    ST_DOT4X2_BODY(ST_LOAD_F32)
}

ST_AVX512 static void dot4x2_i8_avx512(const int8_t *w, int cols, const float *x, const float *y, float *out,
                                       const int8_t *ahead) {
    const int8_t *w1 = w + cols, *w2 = w + 2 * (size_t)cols, *w3 = w + 3 * (size_t)cols;
    ST_DOT4X2_BODY(ST_LOAD_I8)
}

ST_AVX512 static void dot4x4_f32_avx512(const float *w, int cols, const float *x, float *out, const float *ahead) {
    ST_DOT4X4_BODY(float, ST_LOAD_F32)
}

ST_AVX512 static void dot4x4_i8_avx512(const int8_t *w, int cols, const float *x, float *out, const int8_t *ahead) {
    ST_DOT4X4_BODY(int8_t, ST_LOAD_I8)
}
#endif

static void dot4_f32_c(const float *w, int cols, const float *x, float *out, const float *ahead) {
    (void)ahead;
    for (int k = 0; k < 4; k++) out[k] = dot_f32_c(w + (size_t)k * cols, x, cols);
}

static void dot4_i8_c(const int8_t *w, int cols, const float *x, float *out, const int8_t *ahead) {
    (void)ahead;
    for (int k = 0; k < 4; k++) out[k] = dot_i8_c(w + (size_t)k * cols, x, cols);
}

static void dot4x2_f32_c(const float *w, int cols, const float *x, const float *y, float *out, const float *ahead) {
    dot4_f32_c(w, cols, x, out, ahead);
    dot4_f32_c(w, cols, y, out + 4, ahead);
}

static void dot4x2_i8_c(const int8_t *w, int cols, const float *x, const float *y, float *out, const int8_t *ahead) {
    dot4_i8_c(w, cols, x, out, ahead);
    dot4_i8_c(w, cols, y, out + 4, ahead);
}

static void dot4x4_f32_c(const float *w, int cols, const float *x, float *out, const float *ahead) {
    for (int q = 0; q < 4; q++) dot4_f32_c(w, cols, x + (size_t)q * cols, out + 4 * q, ahead);
}

static void dot4x4_i8_c(const int8_t *w, int cols, const float *x, float *out, const int8_t *ahead) {
    for (int q = 0; q < 4; q++) dot4_i8_c(w, cols, x + (size_t)q * cols, out + 4 * q, ahead);
}

static float (*dot_f32)(const float *, const float *, int) = dot_f32_c;
static void (*dot4x2_f32)(const float *, int, const float *, const float *, float *, const float *) = dot4x2_f32_c;
static void (*dot4x2_i8)(const int8_t *, int, const float *, const float *, float *, const int8_t *) = dot4x2_i8_c;
static void (*dot4x4_f32)(const float *, int, const float *, float *, const float *) = dot4x4_f32_c;
static void (*dot4x4_i8)(const int8_t *, int, const float *, float *, const int8_t *) = dot4x4_i8_c;
static void (*dot4_f32)(const float *, int, const float *, float *, const float *) = dot4_f32_c;
static void (*dot4_i8)(const int8_t *, int, const float *, float *, const int8_t *) = dot4_i8_c;
static float (*dot_i8)(const int8_t *, const float *, int) = dot_i8_c;


/* Row `r` of a matrix times vector x. */
static inline float mat_dot(const st_mat *m, int r, const float *x) {
    if (m->type == WT_I8) return dot_i8((const int8_t *)m->w + (size_t)r * m->cols, x, m->cols) * m->scale[r];
    return dot_f32((const float *)m->w + (size_t)r * m->cols, x, m->cols);
}

/* exp for float32 to ~2 ulp, branch-free so loops over it vectorize (libm's expf does not). */
static inline float fast_expf(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest, no libm call */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int32_t i; } u;
    u.i = ((int32_t)n + 127) << 23;
    return p * u.f;
}

#ifdef ST_X86
/* fast_expf on 16 lanes */
ST_AVX512 static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

ST_AVX512 static double exp_sum_avx512(const float *s, float *p, int n, float mx) {
    __m512 acc = _mm512_setzero_ps(), m = _mm512_set1_ps(mx), ninf = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(k, s + i);
        __mmask16 live = _mm512_mask_cmp_ps_mask(k, v, ninf, _CMP_NEQ_OQ);
        __m512 e = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(v, m)));
        if (p) _mm512_mask_storeu_ps(p + i, k, e);
        acc = _mm512_add_ps(acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

/* First index of the largest value (torch.argmax's choice among equal values): each lane keeps its
 * first maximum (strict >), then the lowest index among the lanes that hold the overall one. */
ST_AVX512 static int argmax_avx512(const float *x, int n) {
    __m512 best = _mm512_set1_ps(-INFINITY);
    __m512i where = _mm512_setzero_si512(), idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int i = 0; i < n; i += 16, idx = _mm512_add_epi32(idx, _mm512_set1_epi32(16))) {
        __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __mmask16 up = _mm512_mask_cmp_ps_mask(k, _mm512_maskz_loadu_ps(k, x + i), best, _CMP_GT_OQ);
        best = _mm512_mask_loadu_ps(best, up, x + i);
        where = _mm512_mask_mov_epi32(where, up, idx);
    }
    __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(best));
    return _mm512_mask_reduce_min_epi32(_mm512_cmp_ps_mask(best, top, _CMP_EQ_OQ), where);
}

ST_AVX512 static void silu_mul_avx512(float *g, const float *u, int n) {
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(k, g + i);
        __m512 den = _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), x)));
        __m512 inv = _mm512_rcp14_ps(den); /* 14 bits, then one Newton step: ~23 bits, without a slow divide */
        inv = _mm512_mul_ps(inv, _mm512_fnmadd_ps(den, inv, _mm512_set1_ps(2.0f)));
        __m512 sig = _mm512_mul_ps(x, inv);
        _mm512_mask_storeu_ps(g + i, k, _mm512_mul_ps(sig, _mm512_maskz_loadu_ps(k, u + i)));
    }
}
#endif

/* Softmax attention of one query over two runs of keys and values, n1 then n2 of them (n2 may be 0; a
 * tree's token sees its trunk and its own branch): out = sum_t softmax(q.k_t * scale) v_t. */
static void attend_c(const float *q, const float *k1, const float *v1, int n1, const float *k2, const float *v2, int n2,
                     int d, float scale, float *scores, float *out) {
    const float *keys[2] = {k1, k2}, *vals[2] = {v1, v2};
    int runs[2] = {n1, n2}, count = n1 + n2;
    float mx = -INFINITY, sum = 0;
    for (int r = 0, at = 0; r < 2; at += runs[r++])
        for (int t = 0; t < runs[r]; t++) {
            scores[at + t] = dot_f32_c(q, keys[r] + (size_t)t * d, d) * scale;
            mx = scores[at + t] > mx ? scores[at + t] : mx;
        }
    for (int t = 0; t < count; t++) { scores[t] = fast_expf(scores[t] - mx); sum += scores[t]; }
    float inv = 1.0f / sum;
    for (int i = 0; i < d; i++) out[i] = 0;
    for (int r = 0, at = 0; r < 2; at += runs[r++])
        for (int t = 0; t < runs[r]; t++) {
            float w = scores[at + t] * inv;
            for (int i = 0; i < d; i++) out[i] += w * vals[r][(size_t)t * d + i];
        }
}

#ifdef ST_X86
/* The same with 16-lane vectors: four keys per step, the weighted sum of values kept in registers
 * (head_dim up to 128; wider heads take the portable loop). */
ST_AVX512 static void attend_avx512(const float *q, const float *k1, const float *v1, int n1, const float *k2,
                                    const float *v2, int n2, int d, float scale, float *scores, float *out) {
    if (d > 128) { attend_c(q, k1, v1, n1, k2, v2, n2, d, scale, scores, out); return; }
    const float *keys[2] = {k1, k2}, *vals[2] = {v1, v2};
    int runs[2] = {n1, n2}, count = n1 + n2;
    for (int r = 0, at = 0; r < 2; at += runs[r++]) {
        int t = 0;
        for (; t + 4 <= runs[r]; t += 4) dot4_f32_avx512(keys[r] + (size_t)t * d, d, q, scores + at + t, NULL);
        for (; t < runs[r]; t++) scores[at + t] = dot_f32_avx512(q, keys[r] + (size_t)t * d, d);
    }
    __m512 mxv = _mm512_set1_ps(-INFINITY), sc = _mm512_set1_ps(scale);
    for (int t = 0; t < count; t += 16) {
        __mmask16 k = count - t >= 16 ? 0xFFFF : (__mmask16)((1u << (count - t)) - 1);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, scores + t), sc);
        _mm512_mask_storeu_ps(scores + t, k, v);
        mxv = _mm512_mask_max_ps(mxv, k, mxv, v);
    }
    float inv = (float)(1.0 / exp_sum_avx512(scores, scores, count, _mm512_reduce_max_ps(mxv)));
    __m512 acc[8];
    int lanes = (d + 15) / 16;
    for (int j = 0; j < lanes; j++) acc[j] = _mm512_setzero_ps();
    __mmask16 tail = d % 16 ? (__mmask16)((1u << (d % 16)) - 1) : 0xFFFF;
    for (int r = 0, at = 0; r < 2; at += runs[r++])
        for (int t = 0; t < runs[r]; t++) {
            __m512 w = _mm512_set1_ps(scores[at + t]);
            const float *vt = vals[r] + (size_t)t * d;
            for (int j = 0; j < lanes; j++)
                acc[j] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(j + 1 < lanes ? 0xFFFF : tail, vt + 16 * j), acc[j]);
        }
    __m512 iv = _mm512_set1_ps(inv);
    for (int j = 0; j < lanes; j++)
        _mm512_mask_storeu_ps(out + 16 * j, j + 1 < lanes ? 0xFFFF : tail, _mm512_mul_ps(acc[j], iv));
}
#endif

static double exp_sum_c(const float *s, float *p, int n, float mx) {
    double total = 0;
    for (int i = 0; i < n; i++) {
        float e = s[i] == -INFINITY ? 0.0f : fast_expf(s[i] - mx);
        if (p) p[i] = e;
        total += e;
    }
    return total;
}

static void silu_mul_c(float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) g[i] = g[i] / (1.0f + fast_expf(-g[i])) * u[i];
}

/* b[i] = the bucket of p[i] (0..top), buckets spread linearly from lo, `scale` buckets per unit. */
ST_HOT static void bucket_of(const float *p, int n, float lo, float scale, int top, int32_t *b) {
    for (int i = 0; i < n; i++) {
        int k = (int)((p[i] - lo) * scale);
        b[i] = k < 0 ? 0 : (k < top ? k : top);
    }
}

/* The indices i with b[i] == bucket and p[i] > 0, in order, into idx; returns how many. */
static int in_bucket_c(const int32_t *b, const float *p, int n, int bucket, int32_t *idx) {
    int count = 0;
    for (int i = 0; i < n; i++) { /* branch-free: which side a token falls is random */
        idx[count] = i;
        count += b[i] == bucket && p[i] > 0;
    }
    return count;
}

#ifdef ST_X86
ST_AVX512 static int in_bucket_avx512(const int32_t *b, const float *p, int n, int bucket, int32_t *idx) {
    __m512i want = _mm512_set1_epi32(bucket), lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int count = 0, i = 0;
    for (; i + 16 <= n; i += 16) { /* a full 16-wide store at idx + count <= idx + i stays inside idx[0..n) */
        __mmask16 hit = _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(b + i), want) &
                        _mm512_cmp_ps_mask(_mm512_loadu_ps(p + i), _mm512_setzero_ps(), _CMP_GT_OQ);
        __m512i at = _mm512_add_epi32(lane, _mm512_set1_epi32(i));
        _mm512_storeu_si512(idx + count, _mm512_maskz_compress_epi32(hit, at));
        count += __builtin_popcount(hit);
    }
    int rest = in_bucket_c(b + i, p + i, n - i, bucket, idx + count);
    for (int c = count; c < count + rest; c++) idx[c] += i;
    return count + rest;
}
#endif

/* p = exp(s - mx), 0 where s is -inf (p NULL: nothing stored); returns the sum. */
static double (*exp_sum)(const float *, float *, int, float) = exp_sum_c;
static int argmax_c(const float *x, int n);
static int (*argmax)(const float *, int) = argmax_c;
/* g = silu(g) * u */
static void (*silu_mul)(float *, const float *, int) = silu_mul_c;
static void (*attend)(const float *, const float *, const float *, int, const float *, const float *, int, int, float,
                      float *, float *) = attend_c;
static int (*in_bucket)(const int32_t *, const float *, int, int, int32_t *) = in_bucket_c;

/* bfloat16 <-> float32 rows, for the scoring stages (torch's bf16 tensors) */
static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch's .to(bfloat16) */
    union { float f; uint32_t u; } v = {.f = f};
    uint32_t rounded = (v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16, quiet = (v.u >> 16) | 0x40u;
    return (uint16_t)((v.u & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded); /* a select, so loops vectorize; NaN stays NaN */
}

static void bf16_load_c(const uint16_t *h, int n, float *out) {
    for (int i = 0; i < n; i++) out[i] = bf16_to_f32(h[i]);
}

static void bf16_store_c(const float *in, int n, uint16_t *h) {
    for (int i = 0; i < n; i++) h[i] = f32_to_bf16(in[i]);
}

#ifdef ST_X86
ST_AVX512 static void bf16_load_avx512(const uint16_t *h, int n, float *out) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(h + i)));
        _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    }
    bf16_load_c(h + i, n - i, out + i);
}

ST_AVX512 static void bf16_store_avx512(const float *in, int n, uint16_t *h) {
    int i = 0;
    const __m512i bias = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1), quiet = _mm512_set1_epi32(0x40);
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(in + i);
        __m512i u = _mm512_castps_si512(x), high = _mm512_srli_epi32(u, 16);
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, bias), _mm512_and_si512(high, one)), 16);
        r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), high, quiet); /* NaN stays NaN */
        _mm256_storeu_si256((__m256i *)(h + i), _mm512_cvtepi32_epi16(r));
    }
    bf16_store_c(in + i, n - i, h + i);
}
#endif

static void (*bf16_load)(const uint16_t *, int, float *) = bf16_load_c;
static void (*bf16_store)(const float *, int, uint16_t *) = bf16_store_c;

static void load_row(const void *src, int bf16, size_t at, int n, float *out) {
    if (bf16) bf16_load((const uint16_t *)src + at, n, out);
    else memcpy(out, (const float *)src + at, (size_t)n * sizeof(float));
}

static void store_row(void *dst, int bf16, size_t at, int n, const float *in) {
    if (bf16) bf16_store(in, n, (uint16_t *)dst + at);
    else memcpy((float *)dst + at, in, (size_t)n * sizeof(float));
}

static void pick_kernels(void) {
#ifdef ST_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma")) {
        dot_f32 = dot_f32_avx512;
        dot_i8 = dot_i8_avx512;
        dot4_f32 = dot4_f32_avx512;
        dot4_i8 = dot4_i8_avx512;
        dot4x2_f32 = dot4x2_f32_avx512;
        dot4x2_i8 = dot4x2_i8_avx512;
        dot4x4_f32 = dot4x4_f32_avx512;
        dot4x4_i8 = dot4x4_i8_avx512;
        exp_sum = exp_sum_avx512;
        argmax = argmax_avx512;
        silu_mul = silu_mul_avx512;
        attend = attend_avx512;
        in_bucket = in_bucket_avx512;
        bf16_load = bf16_load_avx512;
        bf16_store = bf16_store_avx512;
    }
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* thread pool: one job at a time, run SPMD by every thread, with a spin barrier inside          */

#define MAX_THREADS 64

typedef void (*job_fn)(void *arg, int tid, int nthreads);

static struct {
    pthread_t threads[MAX_THREADS];
    int nthreads; /* including the caller */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int seq, done, quit;
    int seq_at_start; /* seq when the workers were created: a job posted before a new worker runs is still seen */
    job_fn fn;
    void *arg;
    int linger; /* after this job, workers spin for the next (decode) or sleep at once (scoring: torch runs next) */
    atomic_int bar_count, bar_sense;
    int sense[MAX_THREADS]; /* each thread's barrier sense, kept across jobs like the shared one */
} pool = {.nthreads = 1, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static inline void cpu_relax(void) {
#ifdef ST_X86
    _mm_pause();
#endif
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* Every thread of the job calls this with its id. After a long wait it yields, so a thread that
 * lost its core on a busy machine gets it back. */
static void barrier(int tid) {
    if (pool.nthreads == 1) return;
    int s = !pool.sense[tid];
    pool.sense[tid] = s;
    if (atomic_fetch_add(&pool.bar_count, 1) == pool.nthreads - 1) {
        atomic_store(&pool.bar_count, 0);
        atomic_store(&pool.bar_sense, s);
    } else {
        unsigned spins = 0;
        while (atomic_load(&pool.bar_sense) != s)
            if (++spins > 2000) sched_yield(); else cpu_relax();
    }
}

#define IDLE_SPIN_NS 2e6 /* a worker spins this long for the next job before it sleeps */

static void *worker_main(void *arg) {
    int tid = (int)(intptr_t)arg;
    int seen = pool.seq_at_start, linger = 1;
    for (;;) {
        double start = now_ns(), spin_ns = linger ? IDLE_SPIN_NS : 0;
        unsigned spins = 0;
        while (atomic_load(&pool.seq) == seen && !atomic_load(&pool.quit)) {
            cpu_relax();
            if ((++spins & 255) == 0 && now_ns() - start >= spin_ns) {
                pthread_mutex_lock(&pool.mu);
                while (atomic_load(&pool.seq) == seen && !atomic_load(&pool.quit)) pthread_cond_wait(&pool.cv, &pool.mu);
                pthread_mutex_unlock(&pool.mu);
            }
        }
        if (atomic_load(&pool.quit)) return NULL;
        seen = atomic_load(&pool.seq);
        linger = pool.linger;
        pool.fn(pool.arg, tid, pool.nthreads);
        atomic_fetch_add(&pool.done, 1);
    }
}

static void stop_pool(void) {
    if (pool.nthreads <= 1) return;
    pthread_mutex_lock(&pool.mu);
    atomic_store(&pool.quit, 1);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    for (int t = 1; t < pool.nthreads; t++) pthread_join(pool.threads[t], NULL);
    atomic_store(&pool.quit, 0);
    pool.nthreads = 1;
}

/* One job at a time in the process: ctypes releases the GIL, so two Python threads (or two engines)
 * may call in at once; they take turns here. Held by run_job and st_set_threads. */
static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER;

/* A forked child has only the forking thread: it runs single-threaded, with fresh locks. */
static void after_fork_in_child(void) {
    pool.nthreads = 1;
    atomic_store(&pool.quit, 0);
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.cv, NULL);
    pthread_mutex_init(&job_lock, NULL);
}

/* Set the number of threads (the caller counts as one); returns the number in use. */
int st_set_threads(int n) {
    static int picked = 0;
    if (!picked) { pick_kernels(); pthread_atfork(NULL, NULL, after_fork_in_child); picked = 1; }
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    pthread_mutex_lock(&job_lock);
    if (n == pool.nthreads) { pthread_mutex_unlock(&job_lock); return n; }
    stop_pool();
    atomic_store(&pool.bar_count, 0);
    atomic_store(&pool.bar_sense, 0);
    memset(pool.sense, 0, sizeof(pool.sense));
    pool.seq_at_start = atomic_load(&pool.seq);
    pool.nthreads = 1;
    for (int t = 1; t < n; t++) {
        if (pthread_create(&pool.threads[t], NULL, worker_main, (void *)(intptr_t)t) != 0) break;
        pool.nthreads = t + 1;
    }
    n = pool.nthreads;
    pthread_mutex_unlock(&job_lock);
    return n;
}

static void post_job(job_fn fn, void *arg, int linger) {
    if (pool.nthreads == 1) { fn(arg, 0, 1); return; }
    pool.fn = fn;
    pool.arg = arg;
    pool.linger = linger;
    atomic_store(&pool.done, 0);
    pthread_mutex_lock(&pool.mu);
    atomic_fetch_add(&pool.seq, 1);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    fn(arg, 0, pool.nthreads);
    unsigned spins = 0;
    while (atomic_load(&pool.done) != pool.nthreads - 1)
        if (++spins > 2000) sched_yield(); else cpu_relax();
}

static void run_job(job_fn fn, void *arg) { post_job(fn, arg, 1); }

/* A scoring stage with `per_thread` floats of scratch per thread: the pool's workers sleep right after
 * it, leaving the cores to torch's matmul threads. -2 when `scratch_floats` is too few for the pool. */
static int run_stage(job_fn fn, void *arg, int64_t per_thread, int64_t scratch_floats) {
    pthread_mutex_lock(&job_lock);
    int status = per_thread * pool.nthreads > scratch_floats ? -2 : 0;
    if (!status) post_job(fn, arg, 0);
    pthread_mutex_unlock(&job_lock);
    return status;
}

/* A stage bound by memory bandwidth, run by the calling thread alone: a second thread would only
 * contend with torch's OpenMP threads, which spin on the other cores between matmuls. */
static int run_stage_here(job_fn fn, void *arg) {
    pthread_mutex_lock(&job_lock);
    fn(arg, 0, 1);
    pthread_mutex_unlock(&job_lock);
    return 0;
}

/* Threads in the pool, the caller included. */
int st_threads(void) { return pool.nthreads; }

static inline void split(int n, int tid, int nthreads, int *lo, int *hi) {
    *lo = (int)((int64_t)n * tid / nthreads);
    *hi = (int)((int64_t)n * (tid + 1) / nthreads);
}

/* This thread's share of a matrix's rows, in whole blocks of four (the last thread takes the rest). */
static inline void split_rows(int n, int tid, int nthreads, int *lo, int *hi) {
    split(n, tid, nthreads, lo, hi);
    *lo &= ~3;
    if (tid + 1 < nthreads) *hi &= ~3;
}

/* ------------------------------------------------------------------------------------------ */
/* the forward pass                                                                             */

typedef struct {
    const st_model *m;
    int n; /* rows: one token each */
    const int32_t *tokens, *slots, *pos;
    int n_out;
    const int32_t *out_rows;
    float *logits; /* [n_out, vocab] */
    float *x, *y, *q, *k, *v, *att, *h, *u, *scores, *xf;
} fwd_args;

ST_HOT static void rms_norm(const float *x, const float *w, float *out, int n, float eps) {
    float lane[16] = {0}, ss = 0; /* 16 partial sums, so the loop vectorizes (one serial sum would not) */
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) lane[j] += x[i + j] * x[i + j];
    for (int j = 0; j < 16; j++) ss += lane[j];
    for (; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] * r) * w[i];
}

/* out[r, j] (+)= mat[j] . in[r] for this thread's share of the matrix rows j. The matrix row is the
 * outer loop, four rows at a time, so each weight is read once per step whatever the number of
 * inputs (prefill reads the inputs from cache instead); blocks of four stay whole across threads.
 * Inputs go four (then two, then one) per pass over a block, each weight converted once a pass. */
static void matmul(const st_mat *m, const float *in, int n, float *out, int accumulate, int tid, int nt) {
    int lo, hi, cols = m->cols;
    split_rows(m->rows, tid, nt, &lo, &hi);
    int j = lo;
    float v[16];
    for (; j + 4 <= hi; j += 4)
        for (int r = 0, take; r < n; r += take) {
            take = n - r >= 4 ? 4 : n - r >= 2 ? 2 : 1;
            const float *xr = in + (size_t)r * cols;
            int prefetch = r == 0 && n > 1 && j + 8 <= hi; /* one input: the hardware prefetcher keeps up */
            if (m->type == WT_I8) {
                const int8_t *wj = (const int8_t *)m->w + (size_t)j * cols, *ahead = prefetch ? wj + 4 * (size_t)cols : NULL;
                if (take == 4)
                    dot4x4_i8(wj, cols, xr, v, ahead);
                else if (take == 2)
                    dot4x2_i8(wj, cols, xr, xr + cols, v, ahead);
                else
                    dot4_i8(wj, cols, xr, v, ahead);
                for (int k = 0; k < 4 * take; k++) v[k] *= m->scale[j + (k & 3)];
            } else {
                const float *wj = (const float *)m->w + (size_t)j * cols, *ahead = prefetch ? wj + 4 * (size_t)cols : NULL;
                if (take == 4)
                    dot4x4_f32(wj, cols, xr, v, ahead);
                else if (take == 2)
                    dot4x2_f32(wj, cols, xr, xr + cols, v, ahead);
                else
                    dot4_f32(wj, cols, xr, v, ahead);
            }
            for (int q = 0; q < take; q++) {
                float *o = out + (size_t)(r + q) * m->rows + j;
                for (int k = 0; k < 4; k++) o[k] = accumulate ? o[k] + v[4 * q + k] : v[4 * q + k];
            }
        }
    for (; j < hi; j++)
        for (int r = 0; r < n; r++) {
            float *o = out + (size_t)r * m->rows + j, value = mat_dot(m, j, in + (size_t)r * cols);
            *o = accumulate ? *o + value : value;
        }
}

static void embed_row(const st_mat *e, int token, float *out) {
    if (e->type == WT_I8) {
        const int8_t *w = (const int8_t *)e->w + (size_t)token * e->cols;
        float s = e->scale[token];
        for (int i = 0; i < e->cols; i++) out[i] = (float)w[i] * s;
    } else {
        memcpy(out, (const float *)e->w + (size_t)token * e->cols, sizeof(float) * e->cols);
    }
}

ST_HOT static void rope(float *vec, const float *cos, const float *sin, int half) {
    for (int i = 0; i < half; i++) {
        float a = vec[i], b = vec[i + half];
        vec[i] = a * cos[i] - b * sin[i];
        vec[i + half] = b * cos[i] + a * sin[i];
    }
}

static inline float *kv_at(const st_model *m, int slot, int layer, int which, int head, int t) {
    size_t i = ((((size_t)slot * m->n_layers + layer) * 2 + which) * m->n_kv + head);
    return m->kv + (i * m->capacity + t) * m->head_dim;
}

ST_HOT static void forward_job(void *arg, int tid, int nt) {
    fwd_args *f = arg;
    const st_model *m = f->m;
    const int n = f->n, H = m->hidden, nh = m->n_heads, nkv = m->n_kv, d = m->head_dim, I = m->inter;
    const int qd = nh * d, kvd = nkv * d, half = d / 2, group = nh / nkv;
    const float scale = 1.0f / sqrtf((float)d);
    float *y = f->y + (size_t)tid * n * H;
    float *scores = f->scores + (size_t)tid * m->capacity;
    int lo, hi;

    split(n, tid, nt, &lo, &hi);
    for (int r = lo; r < hi; r++) embed_row(&m->embed, f->tokens[r], f->x + (size_t)r * H);
    barrier(tid);

    for (int l = 0; l < m->n_layers; l++) {
        const st_layer *L = &m->layers[l];
        for (int r = 0; r < n; r++) rms_norm(f->x + (size_t)r * H, L->attn_norm, y + (size_t)r * H, H, m->eps);
        matmul(&L->q, y, n, f->q, 0, tid, nt);
        matmul(&L->k, y, n, f->k, 0, tid, nt);
        matmul(&L->v, y, n, f->v, 0, tid, nt);
        barrier(tid);

        /* RoPE on q and k; k and v into the cache (before any row attends to them) */
        split(n * (nh + nkv), tid, nt, &lo, &hi);
        for (int idx = lo; idx < hi; idx++) {
            int r = idx / (nh + nkv), head = idx % (nh + nkv), p = f->pos[r];
            const float *c = m->cos + (size_t)p * half, *s = m->sin + (size_t)p * half;
            if (head < nh) {
                rope(f->q + (size_t)r * qd + head * d, c, s, half);
            } else {
                int g = head - nh;
                float *kr = f->k + (size_t)r * kvd + g * d;
                rope(kr, c, s, half);
                memcpy(kv_at(m, f->slots[r], l, 0, g, p), kr, sizeof(float) * d);
                memcpy(kv_at(m, f->slots[r], l, 1, g, p), f->v + (size_t)r * kvd + g * d, sizeof(float) * d);
            }
        }
        barrier(tid);

        /* attention: row r at position p sees positions 0..p of its slot */
        split(n * nh, tid, nt, &lo, &hi);
        for (int idx = lo; idx < hi; idx++) {
            int r = idx / nh, head = idx % nh, g = head / group, p = f->pos[r], slot = f->slots[r];
            const float *qv = f->q + (size_t)r * qd + head * d;
            const float *keys = kv_at(m, slot, l, 0, g, 0), *vals = kv_at(m, slot, l, 1, g, 0);
            attend(qv, keys, vals, p + 1, NULL, NULL, 0, d, scale, scores, f->att + (size_t)r * qd + head * d);
        }
        barrier(tid);
        matmul(&L->o, f->att, n, f->x, 1, tid, nt);
        barrier(tid);

        for (int r = 0; r < n; r++) rms_norm(f->x + (size_t)r * H, L->ffn_norm, y + (size_t)r * H, H, m->eps);
        matmul(&L->gate, y, n, f->h, 0, tid, nt);
        matmul(&L->up, y, n, f->u, 0, tid, nt);
        split_rows(I, tid, nt, &lo, &hi); /* the rows gate and up were just split into */
        for (int r = 0; r < n; r++) silu_mul(f->h + (size_t)r * I + lo, f->u + (size_t)r * I + lo, hi - lo);
        barrier(tid);
        matmul(&L->down, f->h, n, f->x, 1, tid, nt);
        barrier(tid);
    }

    float *xf = f->xf + (size_t)tid * f->n_out * H;
    for (int o = 0; o < f->n_out; o++) rms_norm(f->x + (size_t)f->out_rows[o] * H, m->final_norm, xf + (size_t)o * H, H, m->eps);
    matmul(&m->lm_head, xf, f->n_out, f->logits, 0, tid, nt);
}

/* Scratch floats `st_forward` needs for `n` rows and `n_out` logits rows. */
int64_t st_scratch_floats(const st_model *m, int n, int n_out) {
    int64_t H = m->hidden, T = pool.nthreads;
    int64_t qd = (int64_t)m->n_heads * m->head_dim, kvd = (int64_t)m->n_kv * m->head_dim;
    return n * H + T * n * H + n * qd + 2 * n * kvd + n * qd + 2 * (int64_t)n * m->inter + T * m->capacity + T * n_out * H;
}

/* One forward step over `n` rows (token, KV slot, position each); logits of `out_rows`.
 * Returns 0; -1 when a position is outside the cache or a token outside the vocabulary; -2 when
 * `scratch_size` floats are fewer than st_scratch_floats asks (the thread count changed: ask again). */
int st_forward(const st_model *m, int n, const int32_t *tokens, const int32_t *slots, const int32_t *pos, int n_out,
               const int32_t *out_rows, float *logits, float *scratch, int64_t scratch_size) {
    for (int r = 0; r < n; r++)
        if (pos[r] < 0 || pos[r] >= m->capacity || pos[r] >= m->max_pos || tokens[r] < 0 || tokens[r] >= m->vocab) return -1;
    pthread_mutex_lock(&job_lock);
    if (scratch_size < st_scratch_floats(m, n, n_out)) { pthread_mutex_unlock(&job_lock); return -2; }
    int64_t H = m->hidden, T = pool.nthreads;
    int64_t qd = (int64_t)m->n_heads * m->head_dim, kvd = (int64_t)m->n_kv * m->head_dim;
    fwd_args f = {.m = m, .n = n, .tokens = tokens, .slots = slots, .pos = pos, .n_out = n_out, .out_rows = out_rows, .logits = logits};
    float *p = scratch;
    f.x = p; p += n * H;
    f.y = p; p += T * n * H;
    f.q = p; p += n * qd;
    f.k = p; p += n * kvd;
    f.v = p; p += n * kvd;
    f.att = p; p += n * qd;
    f.h = p; p += (int64_t)n * m->inter;
    f.u = p; p += (int64_t)n * m->inter;
    f.scores = p; p += T * m->capacity;
    f.xf = p;
    run_job(forward_job, &f);
    pthread_mutex_unlock(&job_lock);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* sampling: Hugging Face's processors (repetition penalty, temperature, top-k, top-p, min-p)    */

ST_HOT static float max_value(const float *x, int n) {
    float lane[16];
    for (int j = 0; j < 16; j++) lane[j] = -INFINITY;
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
    float best = -INFINITY;
    for (int j = 0; j < 16; j++) best = lane[j] > best ? lane[j] : best;
    for (; i < n; i++) best = x[i] > best ? x[i] : best;
    return best;
}

/* Smallest value above zero (+inf when there is none). */
ST_HOT static float min_positive(const float *x, int n) {
    float lane[16];
    for (int j = 0; j < 16; j++) lane[j] = INFINITY;
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) lane[j] = x[i + j] > 0 && x[i + j] < lane[j] ? x[i + j] : lane[j];
    float best = INFINITY;
    for (int j = 0; j < 16; j++) best = lane[j] < best ? lane[j] : best;
    for (; i < n; i++) best = x[i] > 0 && x[i] < best ? x[i] : best;
    return best;
}

/* First index of the largest value (torch.argmax's choice among equal values). */
static int argmax_c(const float *x, int n) {
    float best = max_value(x, n);
    for (int i = 0; i < n; i++)
        if (x[i] == best) return i;
    return 0;
}

/* Zero p where s is -inf; returns the sum of what is left. */
ST_HOT static double keep_sum(const float *s, float *p, int n) {
    float lane[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) {
            float e = s[i + j] == -INFINITY ? 0.0f : p[i + j];
            p[i + j] = e;
            lane[j] += e;
        }
    double total = 0;
    for (int j = 0; j < 16; j++) total += lane[j];
    for (; i < n; i++) {
        p[i] = s[i] == -INFINITY ? 0.0f : p[i];
        total += p[i];
    }
    return total;
}

/* k-th largest value of x (k >= 1) by quickselect on a copy. */
static float kth_largest(const float *x, int n, int k, float *tmp) {
    memcpy(tmp, x, sizeof(float) * n);
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = tmp[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (tmp[i] > pivot) i++;
            while (tmp[j] < pivot) j--;
            if (i <= j) { float t = tmp[i]; tmp[i] = tmp[j]; tmp[j] = t; i++; j--; }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return tmp[want];
}

/* HF top-p: in ascending order of probability, remove the tokens whose cumulative probability is
 * <= 1 - top_p (never the most likely token). p holds unnormalized probabilities summing to
 * `total`. Found without a full sort: tokens go into value buckets spread linearly between the
 * smallest and largest candidate (monotonic, so the order is kept); buckets wholly below the
 * budget are removed, and only the bucket where the cumulative mass crosses it is bucketed again,
 * until a few tokens remain to sort. Two passes usually suffice, for flat and peaked rows alike. */
static void top_p_filter(float *s, const float *p, int n, float top_p, double total, int32_t *idx, int32_t *idx2) {
    enum { BUCKETS = 1024, FEW = 32 };
    double budget = (1.0 - (double)top_p) * total, below = 0;
    int count = 0, higher = 0; /* higher: some token above the current bucket is kept */
    float hi = max_value(p, n), lo = min_positive(p, n);
    if (hi > lo) { /* the first pass reads p directly (vector loops); the later ones only candidates */
        /* four histograms, summed after: most tokens of a row share a few low buckets, and
         * consecutive adds into one bucket would wait on each other */
        double hist[BUCKETS], part[4][BUCKETS];
        memset(part, 0, sizeof(part));
        float scale = (BUCKETS - 0.5f) / (hi - lo);
        int32_t *bucket = idx2; /* free until the refining passes below */
        bucket_of(p, n, lo, scale, BUCKETS - 1, bucket);
        for (int i = 0; i < n; i++) part[i & 3][bucket[i]] += p[i];
        for (int b = 0; b < BUCKETS; b++) hist[b] = (part[0][b] + part[1][b]) + (part[2][b] + part[3][b]);
        int cross = 0, top = BUCKETS - 1;
        while (top > 0 && hist[top] == 0) top--;
        for (; cross < top; cross++) {
            if (below + hist[cross] > budget) break;
            below += hist[cross];
        }
        higher = cross < top;
        for (int i = 0; i < n; i++) s[i] = bucket[i] < cross ? -INFINITY : s[i];
        count = in_bucket(bucket, p, n, cross, idx);
    } else {
        for (int i = 0; i < n; i++) {
            idx[count] = i;
            count += p[i] > 0;
        }
    }
    while (count > FEW) {
        float lo = INFINITY, hi = -INFINITY;
        for (int c = 0; c < count; c++) {
            float v = p[idx[c]];
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        if (!(hi > lo)) break; /* all equal: walk them */
        double hist[BUCKETS] = {0};
        float scale = (BUCKETS - 0.5f) / (hi - lo);
        for (int c = 0; c < count; c++) {
            int b = (int)((p[idx[c]] - lo) * scale);
            hist[b < BUCKETS ? b : BUCKETS - 1] += p[idx[c]];
        }
        int cross = 0, top = BUCKETS - 1;
        while (top > 0 && hist[top] == 0) top--;
        for (; cross < top; cross++) {
            if (below + hist[cross] > budget) break;
            below += hist[cross];
        }
        if (cross < top) higher = 1;
        int next = 0;
        for (int c = 0; c < count; c++) {
            int b = (int)((p[idx[c]] - lo) * scale);
            b = b < BUCKETS ? b : BUCKETS - 1;
            s[idx[c]] = b < cross ? -INFINITY : s[idx[c]];
            idx2[next] = idx[c];
            next += b == cross;
        }
        memcpy(idx, idx2, sizeof(int32_t) * next);
        count = next;
    }
    for (int c = 1; c < count; c++) { /* insertion sort of the few left, ascending */
        int32_t t = idx[c];
        int k = c - 1;
        while (k >= 0 && p[idx[k]] > p[t]) { idx[k + 1] = idx[k]; k--; }
        idx[k + 1] = t;
    }
    for (int c = 0; c < count; c++) {
        if (below + p[idx[c]] > budget || (c + 1 == count && !higher)) break;
        below += p[idx[c]];
        s[idx[c]] = -INFINITY;
    }
}

typedef struct {
    float penalty, temperature, top_p, min_p;
    int32_t top_k, greedy;
} st_params;

/* Row s of logits through the processors: banned tokens and the repetition penalty always, and for
 * sampled rows temperature, top-k, top-p and min-p. Returns -1 with p = the kept unnormalized
 * probabilities (0 elsewhere) and *total their sum, or for greedy rows the arg-max token. */
ST_HOT static int warp_row(float *s, int V, const uint8_t *sn, const uint8_t *bn, const st_params *q, float *work,
                           double *total) {
    float *p = work, *tmp = work + V;
    int32_t *idx = (int32_t *)(work + 2 * V), *idx2 = (int32_t *)(work + 3 * V);
    if (bn)
        for (int t = 0; t < V; t++) s[t] = bn[t] ? -INFINITY : s[t];
    if (q->penalty != 1.0f) { /* seen tokens are few: skip eight unseen at a time */
        float pen = q->penalty;
        for (int t = 0; t < V; t++) {
            if ((t & 7) == 0 && t + 8 <= V) {
                uint64_t word;
                memcpy(&word, sn + t, 8);
                if (!word) { t += 7; continue; }
            }
            if (sn[t]) s[t] = s[t] < 0 ? s[t] * pen : s[t] / pen;
        }
    }
    if (q->greedy) return argmax(s, V);
    if (q->temperature != 1.0f) { /* times the reciprocal: vectorizes; within an ulp of HF's division */
        float inv_t = 1.0f / q->temperature;
        for (int t = 0; t < V; t++) s[t] *= inv_t;
    }
    if (q->top_k > 0 && q->top_k < V) {
        float kth = kth_largest(s, V, q->top_k, tmp);
        for (int t = 0; t < V; t++) s[t] = s[t] < kth ? -INFINITY : s[t];
    }
    *total = exp_sum(s, p, V, max_value(s, V));
    if (q->top_p < 1.0f) {
        top_p_filter(s, p, V, q->top_p, *total, idx, idx2);
        *total = keep_sum(s, p, V);
    }
    if (q->min_p > 0.0f) {
        int best = argmax(p, V);
        float threshold = q->min_p * p[best];
        for (int t = 0; t < V; t++) s[t] = p[t] < threshold && t != best ? -INFINITY : s[t];
        *total = keep_sum(s, p, V);
    }
    return -1;
}

/* The first token whose cumulative probability (vocabulary order, as torch.multinomial) passes
 * `target`, or the last token with any where rounding leaves the sum short; -1 when p is all 0.
 * Blocks of 64 are summed whole (8 lanes) until the one where the sum passes, then token by token. */
ST_HOT static int inverse_cdf(const float *p, int n, double target) {
    enum { BLOCK = 64 };
    double acc = 0;
    int t = 0;
    for (; t + BLOCK <= n; t += BLOCK) {
        double lane[8] = {0};
        for (int j = 0; j < BLOCK; j++) lane[j & 7] += p[t + j];
        double sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
        if (acc + sum > target) break;
        acc += sum;
    }
    for (; t < n; t++) {
        if (p[t] <= 0) continue;
        acc += p[t];
        if (acc > target) return t;
    }
    for (t = n - 1; t >= 0; t--)
        if (p[t] > 0) return t;
    return -1;
}

/* Choose the next token of each of `n` rows. logits [n, V] (modified); seen/banned [*, V] indexed by
 * rows[i]; params per row; u[i] uniform in [0, 1) (unused for greedy rows). seen is updated. */
ST_HOT void st_sample(int n, int V, float *logits, const int32_t *rows, uint8_t *seen, const uint8_t *banned,
                      const st_params *params, const double *u, int32_t *out, float *work) {
    float *p = work;
    for (int i = 0; i < n; i++) {
        float *s = logits + (size_t)i * V;
        uint8_t *sn = seen + (size_t)rows[i] * V;
        double total = 0;
        int token = warp_row(s, V, sn, banned ? banned + (size_t)rows[i] * V : NULL, &params[i], work, &total);
        if (token < 0) token = inverse_cdf(p, V, u[i] * total);
        if (token < 0) token = argmax(s, V);
        sn[token] = 1;
        out[i] = token;
    }
}

/* The processed distribution of each sampled row (what st_sample draws from), normalized, into
 * probs [n, V]; for speculative decoding, which needs the probabilities themselves. */
ST_HOT void st_probs(int n, int V, float *logits, const int32_t *rows, const uint8_t *seen, const st_params *params,
                     float *probs, float *work) {
    for (int i = 0; i < n; i++) {
        double total = 0;
        float *out = probs + (size_t)i * V;
        st_params q = params[i];
        q.greedy = 0;
        warp_row(logits + (size_t)i * V, V, seen + (size_t)rows[i] * V, NULL, &q, work, &total);
        float inv = total > 0 ? (float)(1.0 / total) : 0.0f;
        for (int t = 0; t < V; t++) out[t] = work[t] * inv;
    }
}

/* Windows' linker wants the module init symbol of an extension; nothing imports this as a module. */
/* ------------------------------------------------------------------------------------------ */
/* batched scoring: the stages between the matmuls                                              */
/*
 * Scoring runs thousands of tokens per forward, where matmuls are compute-bound and torch's AMX
 * kernels win; what torch does slowly there is everything between them (RMSNorm, RoPE, attention
 * over a few dozen keys, SiLU, logsumexp: ~20 passes over memory per layer). These stages do each
 * in one pass, on float32 or bfloat16 tensors that torch owns (`bf16` flags say which). The
 * residual stream stays float32 whichever the matmuls use.
 */

typedef struct {
    int n, d, bf16;
    float *x;
    const void *add;
    const float *w;
    float eps;
    void *y;
    float *scratch; /* [threads, d] */
} add_norm_args;

static void add_norm_job(void *arg, int tid, int nt) {
    add_norm_args *a = arg;
    int lo, hi;
    split(a->n, tid, nt, &lo, &hi);
    float *t = a->scratch + (size_t)tid * a->d;
    for (int r = lo; r < hi; r++) {
        float *x = a->x + (size_t)r * a->d;
        if (a->add) {
            load_row(a->add, a->bf16, (size_t)r * a->d, a->d, t);
            for (int i = 0; i < a->d; i++) x[i] += t[i];
        }
        rms_norm(x, a->w, t, a->d, a->eps);
        store_row(a->y, a->bf16, (size_t)r * a->d, a->d, t);
    }
}

/* x[n, d] += add (when given); y = rms_norm(x) * w. Scratch: d floats. */
int st_add_norm(int n, int d, int bf16, float *x, const void *add, const float *w, float eps, void *y, float *scratch,
                int64_t scratch_floats) {
    add_norm_args a = {n, d, bf16, x, add, w, eps, y, scratch};
    return scratch_floats < d ? -2 : run_stage_here(add_norm_job, &a);
}

typedef struct {
    int n, f, bf16;
    const void *gate_up;
    void *out;
    float *scratch; /* [threads, 2 f] */
} glu_args;

static void glu_job(void *arg, int tid, int nt) {
    glu_args *a = arg;
    int lo, hi;
    split(a->n, tid, nt, &lo, &hi);
    float *g = a->scratch + (size_t)tid * 2 * a->f;
    for (int r = lo; r < hi; r++) {
        load_row(a->gate_up, a->bf16, (size_t)r * 2 * a->f, 2 * a->f, g);
        silu_mul(g, g + a->f, a->f);
        store_row(a->out, a->bf16, (size_t)r * a->f, a->f, g);
    }
}

/* out[n, f] = silu(gate_up[:, :f]) * gate_up[:, f:]. Scratch: 2f floats per thread. */
int st_glu(int n, int f, int bf16, const void *gate_up, void *out, float *scratch, int64_t scratch_floats) {
    glu_args a = {n, f, bf16, gate_up, out, scratch};
    return run_stage(glu_job, &a, 2 * (int64_t)f, scratch_floats);
}

typedef struct {
    int rows, width, n_heads, n_kv, head_dim, bf16;
    const void *qkv;
    const int32_t *pos, *seg, *trunk;
    const float *cos, *sin;
    void *out;
    float *scratch;
    int64_t per_thread;
} tree_attn_args;

/* Attention of one packed row of `W` tokens whose q, k, v (RoPE applied) are `qkv` [W, (H + 2 KV) * D]
 * float32: token t sees keys [0, min(trunk, seg_t)) and [seg_t, t]. out [W, H * D]; scores W, keys and
 * vals W * D floats of scratch (one KV head's keys and values, made contiguous). */
static void attend_tree_row(const float *qkv, int W, int H, int KV, int D, const int32_t *seg, int trunk,
                            float *scores, float *keys, float *vals, float *out) {
    int qkv_w = (H + 2 * KV) * D, group = H / KV;
    float scale = 1.0f / sqrtf((float)D);
    for (int kh = 0; kh < KV; kh++) {
        for (int t = 0; t < W; t++) {
            memcpy(keys + (size_t)t * D, qkv + (size_t)t * qkv_w + (H + kh) * D, D * sizeof(float));
            memcpy(vals + (size_t)t * D, qkv + (size_t)t * qkv_w + (H + KV + kh) * D, D * sizeof(float));
        }
        for (int t = 0; t < W; t++) {
            int shared = trunk < seg[t] ? trunk : seg[t];
            for (int h = kh * group; h < (kh + 1) * group; h++)
                attend(qkv + (size_t)t * qkv_w + h * D, keys, vals, shared, keys + (size_t)seg[t] * D,
                       vals + (size_t)seg[t] * D, t + 1 - seg[t], D, scale, scores, out + (size_t)t * H * D + h * D);
        }
    }
}

/* RoPE on the q and k heads of `W` rows of fused qkv, in place, at positions pos[0..W). */
static void rope_rows(float *qkv, int W, int H, int KV, int D, const int32_t *pos, const float *cos, const float *sin) {
    int qkv_w = (H + 2 * KV) * D, half = D / 2;
    for (int t = 0; t < W; t++) {
        const float *c = cos + (size_t)pos[t] * half, *s = sin + (size_t)pos[t] * half;
        for (int h = 0; h < H + KV; h++) rope(qkv + (size_t)t * qkv_w + h * D, c, s, half);
    }
}

static void tree_attn_job(void *arg, int tid, int nt) {
    tree_attn_args *a = arg;
    int lo, hi, W = a->width, H = a->n_heads, KV = a->n_kv, D = a->head_dim;
    int qkv_w = (H + 2 * KV) * D;
    split(a->rows, tid, nt, &lo, &hi);
    float *buf = a->scratch + (size_t)tid * a->per_thread; /* one row's q k v with RoPE applied */
    float *scores = buf + (size_t)W * qkv_w, *keys = scores + W, *vals = keys + (size_t)W * D, *o = vals + (size_t)W * D;
    for (int r = lo; r < hi; r++) {
        size_t base = (size_t)r * W;
        load_row(a->qkv, a->bf16, base * qkv_w, W * qkv_w, buf);
        rope_rows(buf, W, H, KV, D, a->pos + base, a->cos, a->sin);
        attend_tree_row(buf, W, H, KV, D, a->seg + base, a->trunk[r], scores, keys, vals, o);
        store_row(a->out, a->bf16, base * H * D, W * H * D, o);
    }
}

/* Floats of scratch st_tree_attention needs per thread for rows of `width` tokens. */
int64_t st_tree_attention_floats(int width, int n_heads, int n_kv, int head_dim) {
    int64_t W = width, D = head_dim;
    return W * (n_heads + 2 * n_kv) * D + W + 2 * W * D + W * n_heads * D;
}

/* Attention for packed trees, RoPE included: qkv [rows * width, (H + 2 KV) * D] straight from the
 * fused projection; token t of a row sees keys [0, min(trunk, seg_t)) and [seg_t, t] (a trunk token
 * has seg_t = 0; a branch token, its branch's first column; a pad, itself), at RoPE position pos_t.
 * out [rows * width, H * D]. Scratch: st_tree_attention_floats per thread. */
int st_tree_attention(int rows, int width, int n_heads, int n_kv, int head_dim, int bf16, const void *qkv,
                      const int32_t *pos, const int32_t *seg, const int32_t *trunk, const float *cos, const float *sin,
                      void *out, float *scratch, int64_t scratch_floats) {
    tree_attn_args a = {rows, width, n_heads, n_kv, head_dim, bf16, qkv, pos, seg, trunk, cos, sin, out, scratch,
                        st_tree_attention_floats(width, n_heads, n_kv, head_dim)};
    return run_stage(tree_attn_job, &a, a.per_thread, scratch_floats);
}

typedef struct {
    int n, vocab, bf16;
    const void *logits;
    const int64_t *targets;
    double *logp;
    uint8_t *greedy;
    float *scratch; /* [threads, vocab] */
} logprob_args;

static void logprob_job(void *arg, int tid, int nt) {
    logprob_args *a = arg;
    int lo, hi;
    split(a->n, tid, nt, &lo, &hi);
    float *row = a->scratch + (size_t)tid * a->vocab;
    for (int r = lo; r < hi; r++) {
        load_row(a->logits, a->bf16, (size_t)r * a->vocab, a->vocab, row);
        int best = argmax(row, a->vocab);
        int64_t t = a->targets[r];
        float target = row[t], top = row[best];
        double total = exp_sum(row, row, a->vocab, top);
        a->logp[r] = (double)target - (double)top - log(total);
        a->greedy[r] = best == t;
    }
}

/* Log-softmax at each row's target, and whether the target is the row's (first) argmax, for
 * logits [n, vocab]. Scratch: vocab floats per thread. -1 if a target is outside the vocabulary. */
int st_logprobs(int n, int vocab, int bf16, const void *logits, const int64_t *targets, double *logp, uint8_t *greedy,
                float *scratch, int64_t scratch_floats) {
    for (int r = 0; r < n; r++)
        if (targets[r] < 0 || targets[r] >= vocab) return -1;
    logprob_args a = {n, vocab, bf16, logits, targets, logp, greedy, scratch};
    return run_stage(logprob_job, &a, vocab, scratch_floats);
}

/* ------------------------------------------------------------------------------------------ */
/* batched scoring on bf16 units: the whole layer stack in one call                             */
/*
 * Where the CPU has AMX-BF16 (Sapphire Rapids and later) or AVX512-BF16 (Zen 4 and later), the stages
 * above still leave torch's matmuls and ~100 passes over memory per batch. Here each thread takes a tile
 * of whole rows (~128 tokens) through every layer with its activations in its own cache: bf16 tile matmuls
 * accumulate in float32 and write float32 (torch's CPU bf16 matmul rounds its output to bf16), the
 * residual stream, norms, RoPE, attention and SiLU are float32, and only the matmul inputs are bf16.
 * Weights are packed once into the tile layout (`st_bf16_pack`).
 */
#if defined(ST_X86) && defined(__linux__) && ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || \
                                              (defined(__clang__) && __clang_major__ >= 12))
#define ST_AMX 1
#endif
/* vdpbf16ps needs GCC 10 or clang 9. */
#if defined(ST_X86) && ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10) || \
                        (defined(__clang__) && __clang_major__ >= 9))
#define ST_DPBF16 1
#define ST_DPBF16_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
#endif
#if defined(ST_AMX) || defined(ST_DPBF16)
#include <cpuid.h>
#endif
#ifdef ST_AMX
#include <sys/syscall.h>
#include <unistd.h>
long syscall(long number, ...); /* unistd.h declares it only with _DEFAULT_SOURCE, which -std=c11 leaves out */
#define ST_AMX_FN __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,fma")))

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* Eight tiles of 16 rows x 64 bytes: four float32 accumulators (32 x 32), two A and two B tiles. A
 * constant, so no store to it can be optimized away before ldtilecfg reads it. */
static const amx_config AMX_CONFIG = {.palette = 1, .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
                                      .rows = {16, 16, 16, 16, 16, 16, 16, 16}};
#endif

/* 1 when this CPU and kernel let this process use AMX-BF16 tiles (the kernel grants the tile state on request). */
static int amx_available(void) {
#ifdef ST_AMX
    static int ok = -1;
    if (ok < 0) {
        unsigned a, b, c, d;
        ok = 0;
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1) && (d >> 24 & 1) && __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
            ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
    }
    return ok;
#else
    return 0;
#endif
}

/* 1 when this CPU has AVX512-BF16's vdpbf16ps (Zen 4 and later, Cooper Lake, Sapphire Rapids): the bf16
 * matmuls' path where AMX is missing. cpuid leaf 7, subleaf 1, eax bit 5; AVX-512 state must be enabled. */
static int dpbf16_available(void) {
#ifdef ST_DPBF16
    unsigned a, b, c, d;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 5 & 1);
#else
    return 0;
#endif
}

/* Which unit runs the bf16 matmuls of the packed layer stack and LM head: BF16_AMX, BF16_DP (AVX512-BF16
 * dot products on the same packed weights: ~190 GFLOP/s per Zen 4 core, twice its float32 FMA) or BF16_NONE. */
#define BF16_NONE 0
#define BF16_DP 1
#define BF16_AMX 2
static int bf16_unit = -1;
int st_bf16_unit(void) {
    if (bf16_unit < 0) bf16_unit = amx_available() ? BF16_AMX : dpbf16_available() ? BF16_DP : BF16_NONE;
    return bf16_unit;
}

/* Use `unit` for later calls where this CPU has it (tests and benchmarks run AVX512-BF16 on AMX machines
 * this way); returns the unit in use. Not while a bf16 call runs. */
int st_use_bf16_unit(int unit) {
    if (unit == BF16_NONE || (unit == BF16_DP && dpbf16_available()) || (unit == BF16_AMX && amx_available()))
        bf16_unit = unit;
    return st_bf16_unit();
}

/* A bf16 matrix w [K, N] (input-major, as x @ w) into tiles: for each 16 columns, K/32 tiles of 16
 * rows, row kk holding (w[2kk, n], w[2kk+1, n]) for the 16 columns n. K % 32 == 0, N % 16 == 0. A tile is
 * what AMX loads; each of its rows is one zmm register of pairs for vdpbf16ps. */
void st_bf16_pack(const uint16_t *w, int K, int N, uint16_t *out) {
    for (int nb = 0; nb < N / 16; nb++)
        for (int kb = 0; kb < K / 32; kb++) {
            uint16_t *tile = out + ((size_t)nb * (K / 32) + kb) * 512;
            for (int kk = 0; kk < 16; kk++)
                for (int n = 0; n < 16; n++)
                    for (int p = 0; p < 2; p++)
                        tile[kk * 32 + n * 2 + p] = w[(size_t)(kb * 32 + 2 * kk + p) * N + nb * 16 + n];
        }
}

#ifdef ST_AMX
/* c [M, N] (+)= a [M, K] (bf16, row-major) x b (packed by st_bf16_pack), float32. M, N, K % 32 == 0. */
ST_AMX_FN static void amx_gemm(const uint16_t *a, int M, int K, const uint16_t *b, int N, float *c, int accumulate) {
    int kt = K / 32;
    size_t ldc = (size_t)N * sizeof(float);
    for (int m = 0; m < M; m += 32) {
        const uint16_t *a0 = a + (size_t)m * K, *a1 = a0 + (size_t)16 * K;
        for (int n = 0; n < N; n += 32) {
            float *c00 = c + (size_t)m * N + n, *c10 = c00 + (size_t)16 * N;
            if (accumulate) {
                _tile_loadd(0, c00, ldc); _tile_loadd(1, c00 + 16, ldc);
                _tile_loadd(2, c10, ldc); _tile_loadd(3, c10 + 16, ldc);
            } else {
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            }
            const uint16_t *b0 = b + (size_t)(n / 16) * kt * 512, *b1 = b0 + (size_t)kt * 512;
            for (int k = 0; k < kt; k++) {
                _tile_loadd(4, a0 + k * 32, K * 2);
                _tile_loadd(5, a1 + k * 32, K * 2);
                _tile_loadd(6, b0 + (size_t)k * 512, 64);
                _tile_loadd(7, b1 + (size_t)k * 512, 64);
                _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, c00, ldc); _tile_stored(1, c00 + 16, ldc);
            _tile_stored(2, c10, ldc); _tile_stored(3, c10 + 16, ldc);
        }
    }
}

ST_AMX_FN static void amx_begin(void) { _tile_loadconfig(&AMX_CONFIG); }
ST_AMX_FN static void amx_end(void) { _tile_release(); }
#endif

#ifdef ST_DPBF16
/* amx_gemm's contract on AVX512-BF16: 8 rows x 32 columns of float32 accumulators in registers, each
 * step a broadcast pair (a[r, 2j], a[r, 2j+1]) against row j of two packed column blocks (the tiles'
 * rows are contiguous within a block, so a block is K/2 rows of 16 pairs). */
ST_DPBF16_FN static void dpbf16_gemm(const uint16_t *a, int M, int K, const uint16_t *b, int N, float *c,
                                     int accumulate) {
    int pairs = K / 2;
    for (int n = 0; n < N; n += 32) {
        const uint16_t *b0 = b + (size_t)(n / 16) * (K / 32) * 512, *b1 = b0 + (size_t)(K / 32) * 512;
        for (int m = 0; m < M; m += 8) {
            __m512 acc[8][2];
            float *cr = c + (size_t)m * N + n;
            const int32_t *ar = (const int32_t *)(a + (size_t)m * K);
            for (int r = 0; r < 8; r++) {
                acc[r][0] = accumulate ? _mm512_loadu_ps(cr + (size_t)r * N) : _mm512_setzero_ps();
                acc[r][1] = accumulate ? _mm512_loadu_ps(cr + (size_t)r * N + 16) : _mm512_setzero_ps();
            }
            for (int j = 0; j < pairs; j++) {
                __m512bh w0 = (__m512bh)_mm512_loadu_si512(b0 + (size_t)j * 32);
                __m512bh w1 = (__m512bh)_mm512_loadu_si512(b1 + (size_t)j * 32);
                for (int r = 0; r < 8; r++) {
                    __m512bh av = (__m512bh)_mm512_set1_epi32(ar[(size_t)r * pairs + j]);
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, w0);
                    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, w1);
                }
            }
            for (int r = 0; r < 8; r++) {
                _mm512_storeu_ps(cr + (size_t)r * N, acc[r][0]);
                _mm512_storeu_ps(cr + (size_t)r * N + 16, acc[r][1]);
            }
        }
    }
}
#endif

/* The bf16 matmul on whichever unit st_bf16_unit chose; bf16_begin/bf16_end bracket a thread's use of it
 * (AMX's tile configuration is per thread). */
static void bf16_gemm(const uint16_t *a, int M, int K, const uint16_t *b, int N, float *c, int accumulate) {
#ifdef ST_AMX
    if (st_bf16_unit() == BF16_AMX) {
        amx_gemm(a, M, K, b, N, c, accumulate);
        return;
    }
#endif
#ifdef ST_DPBF16
    dpbf16_gemm(a, M, K, b, N, c, accumulate);
#else
    (void)a; (void)M; (void)K; (void)b; (void)N; (void)c; (void)accumulate;
#endif
}

static void bf16_begin(void) {
#ifdef ST_AMX
    if (st_bf16_unit() == BF16_AMX) amx_begin();
#endif
}

static void bf16_end(void) {
#ifdef ST_AMX
    if (st_bf16_unit() == BF16_AMX) amx_end();
#endif
}

/* 1 when this CPU runs the float32 tile matmul (AVX-512F with FMA): the fp32 layer stack's path. */
int st_f32_tiles_available(void) {
#ifdef ST_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* A float32 matrix w [K, N] (input-major, as x @ w) into panels of 32 columns, each K rows of 32
 * (what f32_gemm streams). N % 32 == 0. */
void st_f32_pack(const float *w, int K, int N, float *out) {
    for (int p = 0; p < N / 32; p++)
        for (int k = 0; k < K; k++) memcpy(out + ((size_t)p * K + k) * 32, w + (size_t)k * N + p * 32, 32 * sizeof(float));
}

#ifdef ST_X86
/* c [M, N] (+)= a [M, K] x b (packed by st_f32_pack), float32 with FMA: 8 rows x 32 columns of
 * accumulators in registers, one panel of b reused by every 8 rows. M % 8 == 0, N % 32 == 0. */
ST_AVX512 static void f32_gemm(const float *a, int M, int K, const float *b, int N, float *c, int accumulate) {
    for (int n = 0; n < N; n += 32) {
        const float *panel = b + (size_t)n * K;
        for (int m = 0; m < M; m += 8) {
            __m512 acc[8][2];
            float *cr = c + (size_t)m * N + n;
            const float *ar = a + (size_t)m * K;
            for (int r = 0; r < 8; r++) {
                acc[r][0] = accumulate ? _mm512_loadu_ps(cr + (size_t)r * N) : _mm512_setzero_ps();
                acc[r][1] = accumulate ? _mm512_loadu_ps(cr + (size_t)r * N + 16) : _mm512_setzero_ps();
            }
            for (int k = 0; k < K; k++) {
                __m512 b0 = _mm512_loadu_ps(panel + (size_t)k * 32), b1 = _mm512_loadu_ps(panel + (size_t)k * 32 + 16);
                for (int r = 0; r < 8; r++) {
                    __m512 av = _mm512_set1_ps(ar[(size_t)r * K + k]);
                    acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
                }
            }
            for (int r = 0; r < 8; r++) {
                _mm512_storeu_ps(cr + (size_t)r * N, acc[r][0]);
                _mm512_storeu_ps(cr + (size_t)r * N + 16, acc[r][1]);
            }
        }
    }
}
#endif

#define TREE_TILE_TOKENS 256 /* tokens per thread tile (measured: 64 / 128 / 256 / 512 gave 17.0 / 18.6 / 19.1 / 20.2 K tok/s) */

/* Where one thread's scratch holds its tile's residual (xb), matmul outputs (cb), matmul inputs (ab:
 * bf16, or float32 when f32) and one row's attention (scores, keys, vals, o), as float offsets; `total`
 * is the floats it needs. tile_rows: rows of `width` tokens per tile. */
typedef struct {
    int tile_rows;
    int64_t cb, ab, scores, keys, vals, o, total;
} tree_scratch;

typedef struct {
    int rows, width, hidden, inner, heads, kv, head_dim, layers, f32;
    float eps;
    const void *const *w; /* per layer: norm1 (f32), qkv, o (packed), norm2 (f32), gate_up, down (packed) */
    /* f32: the matmuls take float32 inputs and st_f32_pack'ed weights (f32_gemm), else bf16 ones on AMX */
    const float *final_norm, *cos, *sin;
    const int32_t *pos, *seg, *trunk;
    float *x;
    float *scratch;
    tree_scratch layout;
    atomic_int next;
} tree_fwd_args;

static inline int64_t round_up(int64_t n, int64_t k) { return (n + k - 1) / k * k; }

/* Floats of scratch for n matmul inputs: bf16 halves, or float32 (16-float aligned either way). */
static inline int64_t input_floats(int64_t n, int f32) { return round_up(f32 ? n : (n + 1) / 2, 16); }

static tree_scratch tree_scratch_layout(int width, int hidden, int inner, int heads, int kv, int head_dim, int f32) {
    tree_scratch t;
    t.tile_rows = width >= TREE_TILE_TOKENS ? 1 : TREE_TILE_TOKENS / width;
    int64_t Tp = round_up((int64_t)t.tile_rows * width, 32), qkv_w = (int64_t)(heads + 2 * kv) * head_dim;
    int64_t widest_in = hidden > inner ? hidden : inner, widest_out = qkv_w > 2 * inner ? qkv_w : 2 * inner;
    if ((int64_t)heads * head_dim > widest_in) widest_in = (int64_t)heads * head_dim;
    t.cb = round_up(Tp * hidden, 16);
    t.ab = t.cb + round_up(Tp * widest_out, 16);
    t.scores = t.ab + input_floats(Tp * widest_in, f32);
    t.keys = t.scores + width;
    t.vals = t.keys + (int64_t)width * head_dim;
    t.o = t.vals + (int64_t)width * head_dim;
    t.total = t.o + (int64_t)width * heads * head_dim;
    return t;
}

int64_t st_tree_forward_floats(int width, int hidden, int inner, int heads, int kv, int head_dim, int f32) {
    return tree_scratch_layout(width, hidden, inner, heads, kv, head_dim, f32).total;
}

#ifdef ST_X86
/* n floats into the matmul input at element `at`: bf16 for AMX, float32 as they are for f32_gemm. */
static inline void put_input(int f32, const float *src, int n, void *in, size_t at) {
    if (f32)
        memcpy((float *)in + at, src, (size_t)n * sizeof(float));
    else
        bf16_store(src, n, (uint16_t *)in + at);
}

static inline void zero_input(int f32, void *in, size_t at, size_t n) {
    size_t size = f32 ? sizeof(float) : sizeof(uint16_t);
    memset((char *)in + at * size, 0, n * size);
}

/* Rows 0..T-1 of x [*, d] normed into the matmul input; rows T..Tp-1 zeroed (the matmuls read whole blocks). */
static void norm_input(int f32, const float *x, const float *w, int T, int Tp, int d, float eps, float *tmp, void *in) {
    for (int t = 0; t < T; t++) {
        if (f32) {
            rms_norm(x + (size_t)t * d, w, (float *)in + (size_t)t * d, d, eps);
        } else {
            rms_norm(x + (size_t)t * d, w, tmp, d, eps);
            bf16_store(tmp, d, (uint16_t *)in + (size_t)t * d);
        }
    }
    zero_input(f32, in, (size_t)T * d, (size_t)(Tp - T) * d);
}

static void tile_gemm(int f32, const void *a, int M, int K, const void *b, int N, float *c, int accumulate) {
    if (f32)
        f32_gemm(a, M, K, b, N, c, accumulate);
    else
        bf16_gemm(a, M, K, b, N, c, accumulate);
}

static void tree_forward_job(void *arg, int tid, int nt) {
    (void)nt;
    tree_fwd_args *f = arg;
    int W = f->width, D = f->hidden, F = f->inner, H = f->heads, KV = f->kv, HD = f->head_dim, f32 = f->f32;
    int qkv_w = (H + 2 * KV) * HD, att_w = H * HD;
    const tree_scratch *lay = &f->layout;
    float *xb = f->scratch + (size_t)tid * lay->total, *cb = xb + lay->cb, *scores = xb + lay->scores;
    float *keys = xb + lay->keys, *vals = xb + lay->vals, *o = xb + lay->o;
    void *ab = xb + lay->ab;
    if (!f32) bf16_begin();
    for (;;) {
        int r0 = atomic_fetch_add(&f->next, 1) * lay->tile_rows;
        if (r0 >= f->rows) break;
        int nr = f->rows - r0 < lay->tile_rows ? f->rows - r0 : lay->tile_rows, T = nr * W, Tp = (int)round_up(T, 32);
        float *x = f->x + (size_t)r0 * W * D;
        memcpy(xb, x, (size_t)T * D * sizeof(float));
        memset(xb + (size_t)T * D, 0, (size_t)(Tp - T) * D * sizeof(float));
        for (int l = 0; l < f->layers; l++) {
            const void *const *w = f->w + 6 * l;
            norm_input(f32, xb, w[0], T, Tp, D, f->eps, o, ab);
            tile_gemm(f32, ab, Tp, D, w[1], qkv_w, cb, 0);
            for (int r = 0; r < nr; r++) {
                size_t at = (size_t)(r0 + r) * W;
                float *q = cb + (size_t)r * W * qkv_w;
                rope_rows(q, W, H, KV, HD, f->pos + at, f->cos, f->sin);
                attend_tree_row(q, W, H, KV, HD, f->seg + at, f->trunk[r0 + r], scores, keys, vals, o);
                put_input(f32, o, W * att_w, ab, (size_t)r * W * att_w);
            }
            zero_input(f32, ab, (size_t)T * att_w, (size_t)(Tp - T) * att_w);
            tile_gemm(f32, ab, Tp, att_w, w[2], D, xb, 1);
            norm_input(f32, xb, w[3], T, Tp, D, f->eps, o, ab);
            tile_gemm(f32, ab, Tp, D, w[4], 2 * F, cb, 0);
            for (int t = 0; t < T; t++) {
                float *g = cb + (size_t)t * 2 * F;
                silu_mul(g, g + F, F);
                put_input(f32, g, F, ab, (size_t)t * F);
            }
            zero_input(f32, ab, (size_t)T * F, (size_t)(Tp - T) * F);
            tile_gemm(f32, ab, Tp, F, w[5], D, xb, 1);
        }
        for (int t = 0; t < T; t++) rms_norm(xb + (size_t)t * D, f->final_norm, x + (size_t)t * D, D, f->eps);
    }
    if (!f32) bf16_end();
}
#endif

/* The layer stack of packed trees (what st_tree_attention's comment describes) in one call, each thread
 * taking tiles of whole rows through every layer: x [rows * width, hidden] float32 holds the embeddings
 * and receives the final normed hidden states. `w`: 6 pointers per layer (see tree_fwd_args); f32 picks
 * the float32 matmuls (AVX-512, weights by st_f32_pack), else bf16 (st_bf16_pack) on AMX or AVX512-BF16.
 * -1 where that matmul cannot run or for sizes it does not divide (hidden, inner, heads * head_dim and the qkv width
 * multiples of 32); -2 when the scratch is too small for the pool. */
int st_tree_forward(int rows, int width, int hidden, int inner, int heads, int kv, int head_dim, int layers, int f32,
                    float eps, const void *const *w, const float *final_norm, const float *cos, const float *sin,
                    const int32_t *pos, const int32_t *seg, const int32_t *trunk, float *x, float *scratch,
                    int64_t scratch_floats) {
#ifdef ST_X86
    int qkv_w = (heads + 2 * kv) * head_dim;
    if (!(f32 ? st_f32_tiles_available() : st_bf16_unit() != BF16_NONE) || hidden % 32 || inner % 32 ||
        (heads * head_dim) % 32 || qkv_w % 32 || head_dim % 2 || heads % kv)
        return -1;
    tree_fwd_args a = {rows, width, hidden, inner, heads, kv, head_dim, layers, f32 != 0, eps, w, final_norm, cos,
                       sin, pos, seg, trunk, x, scratch, tree_scratch_layout(width, hidden, inner, heads, kv, head_dim, f32 != 0)};
    atomic_init(&a.next, 0);
    return run_stage(tree_forward_job, &a, a.layout.total, scratch_floats);
#else
    (void)rows; (void)width; (void)hidden; (void)inner; (void)heads; (void)kv; (void)head_dim; (void)layers; (void)f32;
    (void)eps; (void)w; (void)final_norm; (void)cos; (void)sin; (void)pos; (void)seg; (void)trunk; (void)x;
    (void)scratch; (void)scratch_floats;
    return -1;
#endif
}

#define HEAD_TILE_ROWS 128 /* scored tokens per thread tile of the LM head */
#define HEAD_CHUNK 256     /* vocabulary columns per matmul: a chunk's logits stay in L2 for the softmax pass */

typedef struct {
    int n, hidden, vocab, products;
    const float *h;
    const uint16_t *head;
    const int64_t *targets;
    double *logp;
    uint8_t *greedy;
    float *scratch;
    int64_t per_thread;
    atomic_int next;
} head_args;

static int64_t head_floats(int hidden) { /* room for the 3-product split; 1 product uses a third of it */
    return round_up((int64_t)HEAD_TILE_ROWS * 3 * hidden / 2, 16) + (int64_t)HEAD_TILE_ROWS * HEAD_CHUNK +
           5 * HEAD_TILE_ROWS;
}

#ifdef ST_X86
static void head_job(void *arg, int tid, int nt) {
    (void)nt;
    head_args *a = arg;
    int K = a->hidden, K3 = a->products * K, V = a->vocab;
    float *base = a->scratch + (size_t)tid * a->per_thread;
    uint16_t *split = (uint16_t *)base;
    float *logits = base + round_up((int64_t)HEAD_TILE_ROWS * K3 / 2, 16);
    float *top = logits + (size_t)HEAD_TILE_ROWS * HEAD_CHUNK, *target = top + HEAD_TILE_ROWS;
    double *total = (double *)(target + HEAD_TILE_ROWS); /* 2 floats each */
    int32_t *best = (int32_t *)(total + HEAD_TILE_ROWS);
    float *hi = logits; /* rows' float32 hi parts, before the first chunk needs the space */
    bf16_begin();
    for (;;) {
        int r0 = atomic_fetch_add(&a->next, 1) * HEAD_TILE_ROWS;
        if (r0 >= a->n) break;
        int T = a->n - r0 < HEAD_TILE_ROWS ? a->n - r0 : HEAD_TILE_ROWS, Tp = (int)round_up(T, 32);
        for (int r = 0; r < T; r++) { /* [hi | lo | hi] against [W_hi; W_hi; W_lo]: x.W to ~2^-16, not bf16's 2^-8 */
            const float *x = a->h + (size_t)(r0 + r) * K;
            uint16_t *row = split + (size_t)r * K3;
            bf16_store(x, K, row);
            if (a->products == 3) {
                bf16_load(row, K, hi);
                for (int i = 0; i < K; i++) hi[i] = x[i] - hi[i];
                bf16_store(hi, K, row + K);
                memcpy(row + 2 * K, row, (size_t)K * sizeof(uint16_t));
            }
            top[r] = -INFINITY;
            total[r] = 0;
            best[r] = 0;
        }
        memset(split + (size_t)T * K3, 0, (size_t)(Tp - T) * K3 * sizeof(uint16_t));
        for (int n0 = 0; n0 < V; n0 += HEAD_CHUNK) {
            int nc = V - n0 < HEAD_CHUNK ? V - n0 : HEAD_CHUNK;
            bf16_gemm(split, Tp, K3, a->head + (size_t)(n0 / 16) * (K3 / 32) * 512, nc, logits, 0);
            for (int r = 0; r < T; r++) {
                float *row = logits + (size_t)r * nc;
                int64_t t = a->targets[r0 + r];
                if (t >= n0 && t < n0 + nc) target[r] = row[t - n0];
                int i = argmax(row, nc);
                if (row[i] > top[r]) { /* a new maximum: rescale the sum so far (first index wins a tie) */
                    total[r] *= exp((double)top[r] - (double)row[i]);
                    top[r] = row[i];
                    best[r] = n0 + i;
                }
                total[r] += exp_sum(row, NULL, nc, top[r]); /* only the total: no exp is stored */
            }
        }
        for (int r = 0; r < T; r++) {
            a->logp[r0 + r] = (double)target[r] - (double)top[r] - log(total[r]);
            a->greedy[r0 + r] = best[r] == a->targets[r0 + r];
        }
    }
    bf16_end();
}
#endif

int64_t st_bf16_logprobs_floats(int hidden) { return head_floats(hidden); }

/* st_logprobs for hidden states h [n, hidden] (float32) and an LM head packed by st_bf16_pack, the
 * logits computed on the bf16 unit (AMX or AVX512-BF16) a chunk at a time and never stored whole.
 * products 3: the head is [W_hi; W_hi; W_lo] (3 * hidden rows, vocab columns; hi = bf16(W), lo =
 * bf16(W - hi)), logits to ~2^-16; products 1: the head is W_hi (hidden rows), plain bf16 products
 * summed in float32. -1 without a bf16 unit, for sizes the tiles do not divide (hidden % 32, vocab % 32),
 * products not 1 or 3, or a target outside the vocabulary; -2: scratch too small. */
int st_bf16_logprobs(int n, int hidden, int vocab, int products, const float *h, const uint16_t *head,
                     const int64_t *targets, double *logp, uint8_t *greedy, float *scratch, int64_t scratch_floats) {
#ifdef ST_X86
    if (st_bf16_unit() == BF16_NONE || hidden % 32 || vocab % 32 || (products != 1 && products != 3)) return -1;
    for (int r = 0; r < n; r++)
        if (targets[r] < 0 || targets[r] >= vocab) return -1;
    head_args a = {n, hidden, vocab, products, h, head, targets, logp, greedy, scratch, head_floats(hidden), 0};
    atomic_init(&a.next, 0);
    return run_stage(head_job, &a, a.per_thread, scratch_floats);
#else
    (void)n; (void)hidden; (void)vocab; (void)products; (void)h; (void)head; (void)targets; (void)logp; (void)greedy; (void)scratch;
    (void)scratch_floats;
    return -1;
#endif
}

void *PyInit__kernels(void) { return NULL; }

//! The encoder's matrix multiplies at lower precision (`--precision int8|bf16`), for CPUs that multiply
//! int8 or bf16 faster than f32: AVX512_VNNI's `vpdpbusd` does 64 int8 multiply-adds where an f32 FMA
//! does 16, AVX512_BF16's `vdpbf16ps` 32. Only the multiplies change: layer norm, softmax, GELU and
//! pooling stay in f32 (`kernels`), and so do the products' sums (i32, or f32).
//!
//! int8: each weight column (an output channel) is scaled to [-127, 127] once, when the weights are
//! packed; each row of activations is scaled to [0, 255] with a zero point when it arrives (dynamic,
//! asymmetric: a GELU's outputs are nearly all above -0.17, so a symmetric range would waste half the
//! codes). The integer sums are exact, so the zero point and both scales are applied once per output:
//! y = sx * sw * (sum(qx * qw) - zx * sum(qw)) + bias.
//! bf16: weights and activations rounded to bfloat16 (round to nearest even), sums in f32.
//!
//! Both share one layout: weights in panels of 48 columns (three AVX-512 registers), within a panel
//! k in groups (4 int8 or 2 bf16 values, the width of one lane's dot product), so that one load gives 16
//! columns' next group; activations in blocks of 8 rows stored group-major, so that one 32-bit broadcast
//! gives a row's group. A block of rows against a panel keeps its 8 x 3 accumulators in registers for
//! the whole of k: per group, 3 loads and 8 broadcasts feed 24 dot products (8 x 3 measured a few
//! percent faster than 6 x 4 on Zen 4, both ways; `recall-bench embed --precision`). Without the instructions, a portable kernel computes the same products (the same
//! integers, for int8), slowly.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::kernels::SharedOut;

/// Columns per weight panel.
const NR: usize = 48;
/// AVX-512 registers across a panel.
const REGS: usize = NR / 16;
/// Rows per block of activations (the register block is MR x NR).
const MR: usize = 8;
/// Blocks of rows per parallel task: 128 rows of activations stay in L2 while the task walks the panels.
const TASK_BLOCKS: usize = 16;

/// The arithmetic the encoder's matrix multiplies run in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 products and sums (a query's few rows multiply binary16-stored weights, widened to f32).
    #[default]
    F32,
    /// bfloat16 weights and activations, f32 sums.
    Bf16,
    /// int8 weights (per output channel) and activations (per row), i32 sums.
    Int8,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::Int8];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// Whether this CPU has the instructions that make the precision fast (else it runs portably).
    pub fn accelerated(self) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 => has_bf16(),
            Precision::Int8 => has_vnni(),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown precision {s:?}; use f32, bf16 or int8"))
    }
}

impl TryFrom<String> for Precision {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A (k, n) weight matrix packed for one of the lower precisions, built on first use.
#[derive(Default)]
pub(crate) struct LowPrecision {
    int8: OnceLock<Int8Weight>,
    bf16: OnceLock<Bf16Weight>,
}

impl LowPrecision {
    /// `x @ w + bias` for x (m, k) row-major, `w` (k, n) row-major in f32 (packed on first use).
    pub(crate) fn matmul(
        &self,
        precision: Precision,
        w: &[f32],
        k: usize,
        n: usize,
        x: &[f32],
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let m = x.len() / k;
        match precision {
            Precision::Int8 => self.int8(w, k, n).matmul(x, m, bias),
            Precision::Bf16 => self.bf16(w, k, n).matmul(x, m, bias),
            Precision::F32 => unreachable!("f32 multiplies go through matmul::Matmul"),
        }
    }

    /// Packs the weights for `precision` now rather than on the first batch.
    pub(crate) fn prepare(&self, precision: Precision, w: &[f32], k: usize, n: usize) {
        match precision {
            Precision::Int8 => drop(self.int8(w, k, n)),
            Precision::Bf16 => drop(self.bf16(w, k, n)),
            Precision::F32 => {}
        }
    }

    fn int8(&self, w: &[f32], k: usize, n: usize) -> &Int8Weight {
        self.int8.get_or_init(|| Int8Weight::new(w, k, n))
    }

    fn bf16(&self, w: &[f32], k: usize, n: usize) -> &Bf16Weight {
        self.bf16.get_or_init(|| Bf16Weight::new(w, k, n))
    }
}

/// Where weight (kk, c) of a (k, n) matrix goes in the panel layout both precisions share, with `per`
/// values of k to a lane's group (4 int8, 2 bf16): `[panel of NR columns][group][column][per]`.
fn panel_index(kk: usize, c: usize, groups: usize, per: usize) -> usize {
    ((c / NR * groups + kk / per) * NR + c % NR) * per + kk % per
}

/// int8 weights: panels of NR columns, `[panel][group of 4 k][column][4]`, zero-padded; per column
/// (padded to whole panels) its scale and the sum of its quantized values.
struct Int8Weight {
    k: usize,
    n: usize,
    groups: usize,
    data: Vec<i8>,
    scale: Vec<f32>,
    sum: Vec<i32>,
}

impl Int8Weight {
    fn new(w: &[f32], k: usize, n: usize) -> Self {
        let (panels, groups) = (n.div_ceil(NR), k.div_ceil(4));
        let mut scale = vec![0.0f32; panels * NR];
        let mut sum = vec![0i32; panels * NR];
        for (c, s) in scale.iter_mut().enumerate().take(n) {
            let largest = (0..k).map(|kk| w[kk * n + c].abs()).fold(0.0f32, f32::max);
            *s = if largest > 0.0 { largest / 127.0 } else { 1.0 };
        }
        let mut data = vec![0i8; panels * groups * NR * 4];
        for kk in 0..k {
            for c in 0..n {
                let q = (w[kk * n + c] / scale[c]).round().clamp(-127.0, 127.0) as i8;
                data[panel_index(kk, c, groups, 4)] = q;
                sum[c] += q as i32;
            }
        }
        Int8Weight {
            k,
            n,
            groups,
            data,
            scale,
            sum,
        }
    }

    fn matmul(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let vnni = has_vnni();
        let rows = pack_rows(x, m, self.k, self.groups, |row, codes| {
            #[cfg(target_arch = "x86_64")]
            if vnni {
                // SAFETY: the CPU has AVX-512F and BW (`has_vnni` checks them).
                return unsafe { quantize_row_avx512(row, codes) };
            }
            quantize_row(row, codes)
        });
        let (groups, panel_len) = (self.groups, self.groups * NR * 4);
        drive(m, self.n, |block, panel, out| {
            let a = &rows.data[block * groups * MR..(block + 1) * groups * MR];
            let w = &self.data[panel * panel_len..(panel + 1) * panel_len];
            let scales = Int8Scales {
                row_scale: &rows.scale[block * MR..(block + 1) * MR],
                row_zero: &rows.zero[block * MR..(block + 1) * MR],
                col_scale: &self.scale[panel * NR..(panel + 1) * NR],
                col_sum: &self.sum[panel * NR..(panel + 1) * NR],
            };
            let bias = bias.map(|b| &b[panel * NR..]);
            #[cfg(target_arch = "x86_64")]
            if vnni {
                // SAFETY: the CPU has the kernel's features (`has_vnni`); the slices hold a whole block
                // and a whole panel of `groups` groups, `out` a tile of the output.
                return unsafe { int8_tile_vnni(a, w, groups, &scales, bias, out) };
            }
            out.store(&int8_tile_portable(a, w, groups, &scales), bias)
        })
    }
}

/// Activations packed for the kernels: blocks of MR rows, `[block][group][row]`, a group (4 int8 codes,
/// or 2 bf16 values, in memory order) as one u32, so that a kernel broadcasts a row's group with one
/// load; rows past m and values past k are zero (the zero-padded weights ignore them). For int8, each
/// row's scale and zero point.
struct PackedRows {
    data: Vec<u32>,
    scale: Vec<f32>,
    zero: Vec<i32>,
}

/// Packs x (m, k) block by block, in parallel: `encode` turns one row into its groups (returning its
/// scale and zero point, for int8), into a scratch block of whole rows, which is then interleaved.
fn pack_rows(
    x: &[f32],
    m: usize,
    k: usize,
    groups: usize,
    encode: impl Fn(&[f32], &mut [u32]) -> (f32, i32) + Sync,
) -> PackedRows {
    let blocks = m.div_ceil(MR);
    let mut data = vec![0u32; blocks * groups * MR];
    let mut scale = vec![0.0f32; blocks * MR];
    let mut zero = vec![0i32; blocks * MR];
    data.par_chunks_mut(groups * MR)
        .zip(scale.par_chunks_mut(MR).zip(zero.par_chunks_mut(MR)))
        .enumerate()
        .for_each_init(
            || vec![0u32; groups * MR],
            |scratch, (b, (block, (scale, zero)))| {
                let rows = MR.min(m - b * MR);
                for r in 0..rows {
                    let row = &x[(b * MR + r) * k..(b * MR + r + 1) * k];
                    (scale[r], zero[r]) = encode(row, &mut scratch[r * groups..(r + 1) * groups]);
                }
                // Written in order, read from `rows` streams.
                for (g, out) in block.chunks_exact_mut(MR).enumerate() {
                    for (r, v) in out.iter_mut().enumerate().take(rows) {
                        *v = scratch[r * groups + g];
                    }
                }
            },
        );
    PackedRows { data, scale, zero }
}

/// The scale and zero point that map [lo, hi] (which includes 0) onto the codes [0, 255], 0 exactly.
fn scale_and_zero(lo: f32, hi: f32) -> (f32, f32) {
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    (scale, (-lo / scale).round().clamp(0.0, 255.0))
}

/// Scales a row to [0, 255] with a zero point (the range always includes 0, so 0 is exact) and writes
/// its codes, 4 to a group, the last group zero-padded; returns the scale and the zero point.
fn quantize_row(row: &[f32], groups: &mut [u32]) -> (f32, i32) {
    let lo = row.iter().fold(0.0f32, |a, &v| a.min(v));
    let hi = row.iter().fold(0.0f32, |a, &v| a.max(v));
    let (scale, zero) = scale_and_zero(lo, hi);
    let inverse = 1.0 / scale;
    // 1.5 * 2^23: adding it rounds to the nearest integer (ties to even, as the AVX-512 conversion
    // does) and leaves it in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    for (out, values) in groups.iter_mut().zip(row.chunks(4)) {
        let mut codes = [0u8; 4];
        for (c, &v) in codes.iter_mut().zip(values) {
            *c = (((v * inverse + zero).clamp(0.0, 255.0) + ROUNDER).to_bits() & 0xFF) as u8;
        }
        *out = u32::from_ne_bytes(codes);
    }
    (scale, zero as i32)
}

/// `quantize_row` with AVX-512, to the same codes: 16 values at a time, the last few under a mask.
///
/// # Safety
/// The CPU has the target features below; `groups` holds `row.len().div_ceil(4)` groups.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(row: &[f32], groups: &mut [u32]) -> (f32, i32) {
    use std::arch::x86_64::*;
    assert!(groups.len() * 4 >= row.len());
    let (whole, rest) = (row.len() / 16, row.len() % 16);
    let rest_mask: u16 = ((1u32 << rest) - 1) as u16;
    let src = row.as_ptr();
    // SAFETY: loads stay below row.len() (the last under a mask), stores below row.len() bytes of
    // `groups` (asserted to be at least that long).
    unsafe {
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for i in 0..whole {
            let v = _mm512_loadu_ps(src.add(i * 16));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        // Masked-off lanes load as 0, which the range includes anyway.
        let v = _mm512_maskz_loadu_ps(rest_mask, src.add(whole * 16));
        let (scale, zero) = scale_and_zero(
            _mm512_reduce_min_ps(_mm512_min_ps(lo, v)),
            _mm512_reduce_max_ps(_mm512_max_ps(hi, v)),
        );
        let (inverse, zero_v) = (_mm512_set1_ps(1.0 / scale), _mm512_set1_ps(zero));
        let (low, high) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
        // A multiply then an add, not a fused one: the same roundings as `quantize_row`.
        let code = |v: __m512| {
            let q = _mm512_min_ps(
                _mm512_max_ps(_mm512_add_ps(_mm512_mul_ps(v, inverse), zero_v), low),
                high,
            );
            _mm512_cvtps_epi32(q)
        };
        let dst = groups.as_mut_ptr() as *mut u8;
        if !row.len().is_multiple_of(4) {
            groups[row.len() / 4] = 0;
        }
        for i in 0..whole {
            _mm_storeu_si128(
                dst.add(i * 16) as *mut __m128i,
                _mm512_cvtepi32_epi8(code(_mm512_loadu_ps(src.add(i * 16)))),
            );
        }
        _mm512_mask_cvtepi32_storeu_epi8(dst.add(whole * 16) as *mut _, rest_mask, code(v));
        (scale, zero as i32)
    }
}

/// What turns a block's integer sums into outputs: y = row_scale * col_scale * (sum - row_zero * col_sum).
struct Int8Scales<'a> {
    row_scale: &'a [f32],
    row_zero: &'a [i32],
    col_scale: &'a [f32],
    col_sum: &'a [i32],
}

fn int8_tile_portable(a: &[u32], w: &[i8], groups: usize, e: &Int8Scales) -> [f32; MR * NR] {
    let mut acc = [[0i32; NR]; MR];
    for g in 0..groups {
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = a[g * MR + r].to_ne_bytes();
            for (c, sum) in acc.iter_mut().enumerate() {
                let wv = &w[(g * NR + c) * 4..(g * NR + c) * 4 + 4];
                *sum += (0..4).map(|t| x[t] as i32 * wv[t] as i32).sum::<i32>();
            }
        }
    }
    let mut tile = [0.0f32; MR * NR];
    for (r, acc) in acc.iter().enumerate() {
        for (c, &sum) in acc.iter().enumerate() {
            tile[r * NR + c] = (sum - e.row_zero[r] * e.col_sum[c]) as f32 * (e.row_scale[r] * e.col_scale[c]);
        }
    }
    tile
}

/// One block of MR rows against one panel with `vpdpbusd`: per group, REGS loads of 16 columns' 4
/// weights, and per row one broadcast of its 4 codes and REGS dot products; then the scales, the zero
/// point and the bias, straight into the output.
///
/// # Safety
/// The CPU has the target features below; `a` holds `groups * MR` groups, `w` `groups * NR * 4`
/// weights, the scales MR rows and NR columns, `bias` (when given) `out.cols` values, and `out` is a
/// tile of the output that no other task writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn int8_tile_vnni(a: &[u32], w: &[i8], groups: usize, e: &Int8Scales, bias: Option<&[f32]>, out: OutTile) {
    use std::arch::x86_64::*;
    assert!(a.len() >= groups * MR && w.len() >= groups * NR * 4);
    assert!(e.row_scale.len() >= MR && e.row_zero.len() >= MR && e.col_scale.len() >= NR && e.col_sum.len() >= NR);
    assert!(bias.is_none_or(|b| b.len() >= out.cols) && out.rows <= MR && out.cols <= NR);
    // SAFETY: the reads stay within the lengths asserted above; the writes within the caller's tile.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); REGS]; MR];
        let (ap, wp) = (a.as_ptr(), w.as_ptr());
        for g in 0..groups {
            let wg = wp.add(g * NR * 4);
            let wv: [__m512i; REGS] = std::array::from_fn(|j| _mm512_loadu_si512(wg.add(j * 64) as *const _));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_epi32(*ap.add(g * MR + r) as i32);
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_dpbusd_epi32(*acc, xv, wv[j]);
                }
            }
        }
        for j in 0..out.cols.div_ceil(16) {
            let mask = out.mask(j);
            let col_scale = _mm512_loadu_ps(e.col_scale.as_ptr().add(j * 16));
            let col_sum = _mm512_loadu_si512(e.col_sum.as_ptr().add(j * 16) as *const _);
            let bias = bias.map_or(_mm512_setzero_ps(), |b| {
                _mm512_maskz_loadu_ps(mask, b.as_ptr().add(j * 16))
            });
            for (r, acc) in acc.iter().enumerate().take(out.rows) {
                let zero = _mm512_mullo_epi32(_mm512_set1_epi32(e.row_zero[r]), col_sum);
                let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[j], zero));
                let y = _mm512_fmadd_ps(sum, _mm512_mul_ps(col_scale, _mm512_set1_ps(e.row_scale[r])), bias);
                _mm512_mask_storeu_ps(out.at(r, j * 16), mask, y);
            }
        }
    }
}

/// bf16 weights: panels of NR columns, `[panel][pair of k][column][2]` (bit patterns), zero-padded.
struct Bf16Weight {
    k: usize,
    n: usize,
    pairs: usize,
    data: Vec<u16>,
}

impl Bf16Weight {
    fn new(w: &[f32], k: usize, n: usize) -> Self {
        let (panels, pairs) = (n.div_ceil(NR), k.div_ceil(2));
        let mut data = vec![0u16; panels * pairs * NR * 2];
        for kk in 0..k {
            for c in 0..n {
                data[panel_index(kk, c, pairs, 2)] = bf16_bits(w[kk * n + c]);
            }
        }
        Bf16Weight { k, n, pairs, data }
    }

    fn matmul(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let fast = has_bf16();
        let rows = pack_rows(x, m, self.k, self.pairs, |row, pairs| {
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: the CPU has AVX-512F (`has_bf16` checks it).
                unsafe { bf16_row_avx512(row, pairs) };
                return (1.0, 0);
            }
            bf16_row(row, pairs);
            (1.0, 0)
        });
        let (pairs, panel_len) = (self.pairs, self.pairs * NR * 2);
        drive(m, self.n, |block, panel, out| {
            let a = &rows.data[block * pairs * MR..(block + 1) * pairs * MR];
            let w = &self.data[panel * panel_len..(panel + 1) * panel_len];
            let bias = bias.map(|b| &b[panel * NR..]);
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: the CPU has the kernel's features (`has_bf16`); the slices hold a whole block
                // and a whole panel of `pairs` pairs, `out` a tile of the output.
                return unsafe { bf16_tile_avx512(a, w, pairs, bias, out) };
            }
            out.store(&bf16_tile_portable(a, w, pairs), bias)
        })
    }
}

/// f32 to bfloat16, rounding to nearest even (the encoder's values are finite).
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// A row as bf16 pairs, the even element in the low half (memory order on this little-endian target).
#[inline(always)]
fn bf16_row(row: &[f32], pairs: &mut [u32]) {
    let mut whole = row.chunks_exact(2);
    for (out, v) in pairs.iter_mut().zip(&mut whole) {
        *out = bf16_bits(v[0]) as u32 | (bf16_bits(v[1]) as u32) << 16;
    }
    if let [last] = whole.remainder() {
        pairs[row.len() / 2] = bf16_bits(*last) as u32;
    }
}

/// `bf16_row` compiled for AVX-512.
///
/// # Safety
/// The CPU has the target features below.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bf16_row_avx512(row: &[f32], pairs: &mut [u32]) {
    bf16_row(row, pairs)
}

fn bf16_tile_portable(a: &[u32], w: &[u16], pairs: usize) -> [f32; MR * NR] {
    let mut tile = [0.0f32; MR * NR];
    for p in 0..pairs {
        for r in 0..MR {
            let v = a[p * MR + r];
            let x = [bf16_value(v as u16), bf16_value((v >> 16) as u16)];
            for c in 0..NR {
                let i = (p * NR + c) * 2;
                tile[r * NR + c] += x[0] * bf16_value(w[i]) + x[1] * bf16_value(w[i + 1]);
            }
        }
    }
    tile
}

/// One block of MR rows against one panel with `vdpbf16ps`, laid out as the int8 kernel's; the bias
/// is added on the way out.
///
/// # Safety
/// The CPU has the target features below; `a` holds `pairs * MR` pairs, `w` `pairs * NR * 2` values,
/// `bias` (when given) `out.cols` values, and `out` is a tile of the output that no other task writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_tile_avx512(a: &[u32], w: &[u16], pairs: usize, bias: Option<&[f32]>, out: OutTile) {
    use std::arch::x86_64::*;
    assert!(a.len() >= pairs * MR && w.len() >= pairs * NR * 2);
    assert!(bias.is_none_or(|b| b.len() >= out.cols) && out.rows <= MR && out.cols <= NR);
    // SAFETY: the reads stay within the lengths asserted above, the writes within the caller's tile;
    // __m512bh and __m512i are the same 64 bytes.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); REGS]; MR];
        let (ap, wp) = (a.as_ptr(), w.as_ptr());
        for p in 0..pairs {
            let wg = wp.add(p * NR * 2);
            let wv: [__m512bh; REGS] =
                std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(wg.add(j * 32) as *const _)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(p * MR + r) as i32));
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_dpbf16_ps(*acc, xv, wv[j]);
                }
            }
        }
        for j in 0..out.cols.div_ceil(16) {
            let mask = out.mask(j);
            let bias = bias.map_or(_mm512_setzero_ps(), |b| {
                _mm512_maskz_loadu_ps(mask, b.as_ptr().add(j * 16))
            });
            for (r, acc) in acc.iter().enumerate().take(out.rows) {
                _mm512_mask_storeu_ps(out.at(r, j * 16), mask, _mm512_add_ps(acc[j], bias));
            }
        }
    }
}

/// Where a block's results go: `rows` x `cols` values of the output from `ptr`, rows `stride` apart.
#[derive(Clone, Copy)]
struct OutTile {
    ptr: *mut f32,
    stride: usize,
    rows: usize,
    cols: usize,
}

impl OutTile {
    /// Row r, column c of the tile.
    ///
    /// # Safety
    /// r < rows and c < cols.
    unsafe fn at(self, r: usize, c: usize) -> *mut f32 {
        // SAFETY: the caller keeps (r, c) inside the tile, which lies inside the output.
        unsafe { self.ptr.add(r * self.stride + c) }
    }

    /// The lanes of the j-th group of 16 columns that lie inside the tile.
    fn mask(self, j: usize) -> u16 {
        let left = self.cols - j * 16;
        if left >= 16 {
            u16::MAX
        } else {
            (1u16 << left) - 1
        }
    }

    /// A computed tile (MR x NR, row-major) into the output, plus the bias.
    fn store(self, tile: &[f32; MR * NR], bias: Option<&[f32]>) {
        for r in 0..self.rows {
            for c in 0..self.cols {
                // SAFETY: r < rows, c < cols.
                unsafe { *self.at(r, c) = tile[r * NR + c] + bias.map_or(0.0, |b| b[c]) };
            }
        }
    }
}

// SAFETY: each task writes through its own tile only (`drive`).
unsafe impl Send for OutTile {}

/// Runs `tile(block, panel, out)` for every block of MR rows against every panel of NR columns, in
/// parallel, each writing its part of the (m, n) output. A task is up to TASK_BLOCKS blocks against one
/// panel, ordered block-major, so that consecutive tasks (one thread's, as rayon splits a range) reuse
/// the same rows; a few rows (a query) make one task per panel.
fn drive(m: usize, n: usize, tile: impl Fn(usize, usize, OutTile) + Sync) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let shared = SharedOut(out.as_mut_ptr());
    let (blocks, panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let chunks = blocks.div_ceil(TASK_BLOCKS);
    (0..chunks * panels).into_par_iter().for_each(|task| {
        let shared = &shared;
        let (chunk, panel) = (task / panels, task % panels);
        for block in chunk * TASK_BLOCKS..((chunk + 1) * TASK_BLOCKS).min(blocks) {
            let out = OutTile {
                // SAFETY: row block * MR < m and column panel * NR < n: inside the output's capacity.
                ptr: unsafe { shared.0.add(block * MR * n + panel * NR) },
                stride: n,
                rows: MR.min(m - block * MR),
                cols: NR.min(n - panel * NR),
            };
            tile(block, panel, out);
        }
    });
    // SAFETY: the tasks covered every block of rows against every panel of columns, so every one of the
    // m x n values has been written (the tile functions write every value of their tile).
    unsafe { out.set_len(m * n) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random values in [-1, 1): rounding errors of a periodic pattern would all line up.
    fn value(i: usize) -> f32 {
        let h = (i as u64 + 1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// x @ w + bias in f64, from the values the kernels actually multiply (`xq`, `wq`).
    fn reference(xq: &[f64], wq: &[f64], bias: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| xq[r * k + i] * wq[i * n + c]).sum::<f64>() + bias[c] as f64;
            }
        }
        out
    }

    /// Every kernel this CPU can run (the dispatched one and the portable one) against the f64 product of
    /// the same quantized values: shapes with partial panels, groups and blocks.
    #[test]
    fn int8_matches_the_f64_product_of_its_quantized_values() {
        for (m, k, n) in [(1, 5, 3), (7, 53, 70), (13, 384, 64), (100, 130, 129)] {
            let w: Vec<f32> = (0..k * n).map(|i| value(i) * 0.2).collect();
            let x: Vec<f32> = (0..m * k).map(|i| value(i + 17) * 3.0 + 0.5).collect();
            let bias: Vec<f32> = (0..n).map(|i| value(i + 3)).collect();
            let weight = Int8Weight::new(&w, k, n);
            let groups = weight.groups;
            let rows = pack_rows(&x, m, k, groups, quantize_row);
            #[cfg(target_arch = "x86_64")]
            if has_vnni() {
                // SAFETY: detected above.
                let fast = pack_rows(&x, m, k, groups, |r, g| unsafe { quantize_row_avx512(r, g) });
                assert_eq!(
                    (&fast.data, &fast.scale, &fast.zero),
                    (&rows.data, &rows.scale, &rows.zero)
                );
            }
            // The dequantized values: w = sw * qw, x = sx * (qx - zx).
            let wq: Vec<f64> = (0..k * n)
                .map(|i| {
                    let (kk, c) = (i / n, i % n);
                    let q = weight.data[panel_index(kk, c, groups, 4)];
                    q as f64 * weight.scale[c] as f64
                })
                .collect();
            let xq: Vec<f64> = (0..m * k)
                .map(|i| {
                    let (r, kk) = (i / k, i % k);
                    let q = rows.data[(r / MR * groups + kk / 4) * MR + r % MR].to_ne_bytes()[kk % 4];
                    (q as f64 - rows.zero[r] as f64) * rows.scale[r] as f64
                })
                .collect();
            let want = reference(&xq, &wq, &bias, m, k, n);
            let exact = reference(
                &x.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                &w.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                &bias,
                m,
                k,
                n,
            );
            let portable = drive(m, n, |b, p, out| {
                let scales = Int8Scales {
                    row_scale: &rows.scale[b * MR..(b + 1) * MR],
                    row_zero: &rows.zero[b * MR..(b + 1) * MR],
                    col_scale: &weight.scale[p * NR..(p + 1) * NR],
                    col_sum: &weight.sum[p * NR..(p + 1) * NR],
                };
                let a = &rows.data[b * groups * MR..(b + 1) * groups * MR];
                let wp = &weight.data[p * groups * NR * 4..(p + 1) * groups * NR * 4];
                out.store(&int8_tile_portable(a, wp, groups, &scales), Some(&bias[p * NR..]))
            });
            let dispatched = weight.matmul(&x, m, Some(&bias));
            let scale = exact.iter().fold(1.0f64, |a, v| a.max(v.abs()));
            for (name, got) in [("dispatched", &dispatched), ("portable", &portable)] {
                for (i, (g, want)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - want).abs() <= 1e-5 * scale,
                        "{name} ({m}, {k}, {n}) element {i}: {g} against {want}"
                    );
                }
            }
            // And the quantization itself stays close to the exact product: its error is within 1% of
            // the outputs' spread (root mean squares).
            let rms = |v: &mut dyn Iterator<Item = f64>| {
                let (sum, count) = v.fold((0.0, 0usize), |(s, c), x| (s + x * x, c + 1));
                (sum / count as f64).sqrt()
            };
            let error = rms(&mut dispatched.iter().zip(&exact).map(|(g, e)| *g as f64 - e));
            let spread = rms(&mut exact.iter().copied());
            assert!(
                error <= 0.01 * spread,
                "({m}, {k}, {n}): error {error} for outputs of {spread}"
            );
        }
    }

    #[test]
    fn bf16_matches_the_f64_product_of_its_rounded_values() {
        for (m, k, n) in [(1, 5, 3), (7, 53, 70), (13, 384, 64), (100, 130, 129)] {
            let w: Vec<f32> = (0..k * n).map(|i| value(i) * 0.2).collect();
            let x: Vec<f32> = (0..m * k).map(|i| value(i + 17) * 3.0 + 0.5).collect();
            let bias: Vec<f32> = (0..n).map(|i| value(i + 3)).collect();
            let round = |v: &f32| bf16_value(bf16_bits(*v)) as f64;
            let want = reference(
                &x.iter().map(round).collect::<Vec<_>>(),
                &w.iter().map(round).collect::<Vec<_>>(),
                &bias,
                m,
                k,
                n,
            );
            let weight = Bf16Weight::new(&w, k, n);
            let pairs = weight.pairs;
            let rows = pack_rows(&x, m, k, pairs, |r, p| {
                bf16_row(r, p);
                (1.0, 0)
            });
            let portable = drive(m, n, |b, p, out| {
                let a = &rows.data[b * pairs * MR..(b + 1) * pairs * MR];
                let wp = &weight.data[p * pairs * NR * 2..(p + 1) * pairs * NR * 2];
                out.store(&bf16_tile_portable(a, wp, pairs), Some(&bias[p * NR..]))
            });
            let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
            for (name, got) in [
                ("dispatched", &weight.matmul(&x, m, Some(&bias))),
                ("portable", &portable),
            ] {
                for (i, (g, want)) in got.iter().zip(&want).enumerate() {
                    // Products of bf16 values are exact in f32; only the f32 sums round.
                    assert!(
                        (*g as f64 - want).abs() <= 1e-5 * scale,
                        "{name} ({m}, {k}, {n}) element {i}: {g} against {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(bf16_bits(-2.5), half::bf16::from_f32(-2.5).to_bits());
        for i in 0..10_000 {
            let v = value(i) * 1e3 + i as f32 * 1e-3;
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
    }

    #[test]
    fn a_row_keeps_zero_exact_and_uses_the_whole_code_range() {
        // 21 values: whole groups, a partial one, and more than one lane's worth for the range.
        let mut row = vec![0.5f32; 21];
        row[..5].copy_from_slice(&[-0.17, 0.0, 3.0, 1.2, -0.05]);
        let mut groups = vec![0u32; 6];
        let (scale, zero) = quantize_row(&row, &mut groups);
        let codes: Vec<u8> = groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
        assert_eq!(codes[1] as i32, zero, "0 maps to the zero point exactly");
        assert_eq!((codes[2], codes[0]), (255, 0), "the range's ends");
        assert_eq!(&codes[21..], &[0, 0, 0], "past the row");
        for (v, q) in row.iter().zip(&codes) {
            assert!(
                (scale * (*q as f32 - zero as f32) - v).abs() <= scale / 2.0 + 1e-6,
                "{v} -> {q}"
            );
        }
        // A constant row of zeros is all zero points, and the zero point is 0.
        let mut groups = vec![7u32; 2];
        assert_eq!(quantize_row(&[0.0; 8], &mut groups).1, 0);
        assert_eq!(groups, [0, 0]);
    }

    #[test]
    fn precisions_parse_and_name_themselves() {
        for p in Precision::ALL {
            assert_eq!(p.as_str().parse::<Precision>().unwrap(), p);
        }
        assert_eq!("INT8".parse::<Precision>().unwrap(), Precision::Int8);
        let err = "fp16".parse::<Precision>().unwrap_err();
        assert!(err.contains("f32, bf16 or int8"), "{err}");
    }
}

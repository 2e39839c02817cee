//! `x @ w (+ bias)` against a fixed weight matrix, as one Candle op that writes its output once.
//! Many rows (a batch) go to the `gemm` crate directly: Candle's own matmul zeroes its output first and
//! the bias would be another pass over it; here the output starts uninitialised, or filled with the
//! bias for the multiply to accumulate onto. A few rows (a query, a short batch) take a packed-panel
//! kernel instead: a general GEMM packs the whole weight matrix on every call and wakes its thread pool,
//! which for a 15-token query costs more than the arithmetic. For that path the weights are packed once
//! at load, in 16-column panels laid out for sequential streaming, and each panel is multiplied against
//! all rows while it sits in cache. On a CPU with AVX-512 a panel is one register wide and up to 24 rows
//! accumulate in registers at once; with AVX2 it is two registers and six rows. The rows are handed to
//! the kernels transposed (k-major within each block of rows), so that the x values one step of k needs
//! lie side by side: the kernel reads them at fixed offsets from one pointer, instead of computing an
//! address per row, whose integer work competed with the multiply-adds for the same execution ports.
//!
//! The panels hold the weights in half precision (IEEE binary16), widened to f32 as they are loaded;
//! products and sums stay in f32. Why: a query multiplies ~20 rows against every weight once, so it
//! streams the whole model from memory (10.6 million weights: 42 MB in f32, 21 MB here) for little
//! arithmetic; halving the bytes took a query from ~4.3 to ~3.75 ms back to back (README, embedder
//! section). Rounding a weight to binary16 changes it by at most 2^-11 of itself; tests/embedder.rs
//! holds a text embedded alone (this path) to cosine >= 0.99999 with the same text embedded in a
//! batch (the f32 GEMM), and to 0.9999 with sentence-transformers' vector.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{contiguous, SharedOut};
use super::quantized::{LowPrecision, Precision};

/// Columns per panel: one AVX-512 register, or two AVX2 registers, of f32.
const PANEL: usize = 16;
/// Rows multiplied against a panel per pass over it. The AVX-512 kernel keeps them all in registers
/// (24 accumulators and the widened weights, of its 32), so a query of up to 24 word pieces (a typical
/// question) streams and widens each panel once.
const ROW_BLOCK: usize = 24;
/// Rows per register block of the AVX2 kernel: 6 rows x 2 registers of accumulators leave room for the
/// loads in its 16 registers.
const AVX2_ROWS: usize = 6;
/// Steps of k per task when rows are transposed.
const TRANSPOSE_STEPS: usize = 128;
/// Up to this many rows the packed kernel beats the general GEMM on this model's shapes (measured).
const MAX_ROWS: usize = 48;

/// A (k, n) weight matrix in both layouts: row-major f32 for the general GEMM, and as n/16 panels of
/// (k, 16) binary16 values (bit patterns), zero-padded to a whole panel, for a few rows; and the int8 and
/// bf16 layouts (`quantized`), built when a precision first asks for them.
pub(crate) struct Weight {
    k: usize,
    n: usize,
    rows: Vec<f32>,
    panels: Vec<u16>,
    low: LowPrecision,
}

impl Weight {
    /// `w` is (k, n), row-major: the layer's weight already transposed for `x @ w`.
    pub(crate) fn new(w: &Tensor) -> candle_core::Result<Self> {
        let (k, n) = w.dims2()?;
        let rows = w.flatten_all()?.to_vec1::<f32>()?;
        let n_panels = n.div_ceil(PANEL);
        let mut panels = vec![0u16; n_panels * k * PANEL];
        for p in 0..n_panels {
            for kk in 0..k {
                for c in 0..PANEL.min(n - p * PANEL) {
                    panels[(p * k + kk) * PANEL + c] = half::f16::from_f32(rows[kk * n + p * PANEL + c]).to_bits();
                }
            }
        }
        Ok(Weight {
            k,
            n,
            rows,
            panels,
            low: LowPrecision::default(),
        })
    }

    /// `x @ self + bias` (no bias when `None`) in `precision`.
    pub(crate) fn apply(&self, x: &Tensor, bias: Option<&[f32]>, precision: Precision) -> candle_core::Result<Tensor> {
        x.apply_op1_no_bwd(&Matmul {
            weight: self,
            bias,
            precision,
        })
    }

    /// Packs the weights for `precision` now, so that the first batch does not pay for it.
    pub(crate) fn prepare(&self, precision: Precision) {
        self.low.prepare(precision, &self.rows, self.k, self.n);
    }
}

/// `x @ w + bias` for x of shape (m, k); no bias when `bias` is `None`.
pub(crate) struct Matmul<'a> {
    pub weight: &'a Weight,
    pub bias: Option<&'a [f32]>,
    pub precision: Precision,
}

impl CustomOp1 for Matmul<'_> {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = layout.shape().dims2()?;
        let w = self.weight;
        if k != w.k {
            candle_core::bail!("matmul: x has {k} columns but the weights have {} rows", w.k);
        }
        if self.bias.is_some_and(|b| b.len() != w.n) {
            candle_core::bail!("matmul: the bias must have one value per output column ({})", w.n);
        }
        let x = contiguous(storage, layout, self.name())?;
        let out = if self.precision != Precision::F32 {
            w.low.matmul(self.precision, &w.rows, w.k, w.n, x, self.bias)
        } else if m <= MAX_ROWS {
            self.few_rows(x, m)
        } else {
            self.many_rows(x, m)
        };
        Ok((CpuStorage::F32(out), Shape::from((m, w.n))))
    }
}

impl Matmul<'_> {
    fn many_rows(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (k, n) = (self.weight.k, self.weight.n);
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        if let Some(bias) = self.bias {
            for _ in 0..m {
                out.extend_from_slice(bias);
            }
        }
        let accumulate = self.bias.is_some();
        // SAFETY: out has room for m x n values; x is (m, k) and the weights (k, n), both row-major. With
        // `accumulate` false the GEMM only writes dst, every element of it, so after the call all m x n
        // values are initialised either way.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                accumulate,
                x.as_ptr(),
                1,
                k as isize,
                self.weight.rows.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
            out.set_len(m * n);
        }
        out
    }

    fn few_rows(&self, x: &[f32], m: usize) -> Vec<f32> {
        let w = self.weight;
        let (k, n) = (w.k, w.n);
        let mut out = vec![0.0f32; m * n];
        let shared = SharedOut(out.as_mut_ptr());
        let n_panels = n.div_ceil(PANEL);
        // Blocks of equal size: 30 rows as 15 + 15, not 24 + 6, whose short pass costs nearly as much
        // as a full one.
        let block = m.div_ceil(m.div_ceil(ROW_BLOCK));
        let xt = transposed_blocks(x, m, k, block);
        (0..n_panels).into_par_iter().with_min_len(8).for_each(|p| {
            let shared = &shared;
            let panel = &w.panels[p * k * PANEL..(p + 1) * k * PANEL];
            let cols = PANEL.min(n - p * PANEL);
            let mut tile = [0.0f32; ROW_BLOCK * PANEL];
            for r0 in (0..m).step_by(block) {
                let rows = block.min(m - r0);
                multiply_panel(&xt[r0 * k..(r0 + rows) * k], rows, k, panel, &mut tile);
                for r in 0..rows {
                    let row = &mut tile[r * PANEL..r * PANEL + cols];
                    if let Some(bias) = self.bias {
                        row.iter_mut().zip(&bias[p * PANEL..]).for_each(|(v, b)| *v += b);
                    }
                    // SAFETY: row r0 + r, columns p*16 .. p*16 + cols lie inside `out` and belong to this panel.
                    unsafe {
                        let dst = shared.0.add((r0 + r) * n + p * PANEL);
                        std::ptr::copy_nonoverlapping(row.as_ptr(), dst, cols);
                    }
                }
            }
        });
        out
    }
}

/// x (m, k) row-major, rearranged so that each block of `block` rows (the last may be shorter) keeps its
/// place but is stored k-major: row r0 + r, column kk of a block of `rows` rows at r0 * k + kk * rows + r.
fn transposed_blocks(x: &[f32], m: usize, k: usize, block: usize) -> Vec<f32> {
    let mut xt = vec![0.0f32; m * k];
    for r0 in (0..m).step_by(block) {
        let rows = block.min(m - r0);
        let src = &x[r0 * k..(r0 + rows) * k];
        // Written in order, read across the rows: each source line is read from L1 by the next 15
        // steps, where writing across would touch a new line per value (measured: the other order took
        // ~8% of a query, this one ~5% on one thread, so the threads share it).
        xt[r0 * k..(r0 + rows) * k]
            .par_chunks_mut(rows * TRANSPOSE_STEPS)
            .enumerate()
            .for_each(|(c, steps)| {
                for (i, step) in steps.chunks_exact_mut(rows).enumerate() {
                    let kk = c * TRANSPOSE_STEPS + i;
                    for (r, v) in step.iter_mut().enumerate() {
                        *v = src[r * k + kk];
                    }
                }
            });
    }
    xt
}

/// tile[r][0..16] = sum over kk of x[r][kk] * panel[kk][0..16], for up to ROW_BLOCK rows given k-major
/// (`xt[kk * rows + r]`).
fn multiply_panel(xt: &[f32], rows: usize, k: usize, panel: &[u16], tile: &mut [f32; ROW_BLOCK * PANEL]) {
    assert!((1..=ROW_BLOCK).contains(&rows) && xt.len() >= rows * k && panel.len() >= k * PANEL);
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (whose conversion from binary16 needs nothing more); the
            // slices were checked above.
            return unsafe { multiply_panel_avx512(xt, rows, k, panel, tile) };
        }
        if has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2, FMA and F16C; the slices were checked above.
            return unsafe { multiply_panel_avx2(xt, rows, k, panel, tile) };
        }
    }
    multiply_panel_portable(xt, rows, k, panel, tile)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma_f16c() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

fn multiply_panel_portable(xt: &[f32], rows: usize, k: usize, panel: &[u16], tile: &mut [f32]) {
    tile.fill(0.0);
    let mut wide = [0.0f32; PANEL];
    for kk in 0..k {
        for (w, &h) in wide.iter_mut().zip(&panel[kk * PANEL..(kk + 1) * PANEL]) {
            *w = half::f16::from_bits(h).to_f32();
        }
        for (r, &xv) in xt[kk * rows..(kk + 1) * rows].iter().enumerate() {
            for c in 0..PANEL {
                tile[r * PANEL + c] += xv * wide[c];
            }
        }
    }
}

/// Any number of rows, in register blocks of AVX2_ROWS.
///
/// # Safety
/// The CPU has the target features below, and the slices hold the sizes stated.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multiply_panel_avx2(xt: &[f32], rows: usize, k: usize, panel: &[u16], tile: &mut [f32]) {
    // SAFETY: the caller checked avx2, fma and f16c (the target features) and the slice bounds that
    // `avx2_block` relies on: each block starts at row r0 < rows of `xt`'s k-major layout.
    unsafe {
        for r0 in (0..rows).step_by(AVX2_ROWS) {
            let n = AVX2_ROWS.min(rows - r0);
            avx2_block(&xt[r0..], rows, n, k, panel, &mut tile[r0 * PANEL..]);
        }
    }
}

/// Up to AVX2_ROWS rows of a k-major block of `stride` rows; `xt` and `tile` start at the first of them.
///
/// # Safety
/// The CPU has the target features below, and the slices hold the sizes stated.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_block(xt: &[f32], stride: usize, rows: usize, k: usize, panel: &[u16], tile: &mut [f32]) {
    // SAFETY: every pointer read is below xt.len() (kk * stride + r < (k - 1) * stride + rows) or
    // panel.len() (kk * PANEL + 16 <= k * PANEL), every write below rows * PANEL <= tile.len(): the debug
    // assertion states it, and `multiply_panel` checks the sizes before dispatching here.
    unsafe {
        use std::arch::x86_64::*;
        debug_assert!(rows <= AVX2_ROWS && xt.len() > (k - 1) * stride + rows - 1 && tile.len() >= rows * PANEL);
        let mut acc = [[_mm256_setzero_ps(); 2]; AVX2_ROWS];
        let w = panel.as_ptr();
        let xp = xt.as_ptr();
        for kk in 0..k {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(kk * PANEL) as *const __m128i));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(kk * PANEL + 8) as *const __m128i));
            // The row count is fixed per call; the branches predict perfectly.
            for (r, a) in acc.iter_mut().enumerate().take(rows) {
                let xv = _mm256_set1_ps(*xp.add(kk * stride + r));
                a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate().take(rows) {
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * PANEL), a[0]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * PANEL + 8), a[1]);
        }
    }
}

/// The row count picks a kernel compiled for it, so that its accumulators are registers, not an
/// array indexed at run time.
///
/// # Safety
/// The CPU has the target features below, and the slices hold the sizes stated.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn multiply_panel_avx512(xt: &[f32], rows: usize, k: usize, panel: &[u16], tile: &mut [f32]) {
    // SAFETY: the caller checked avx512f; each arm passes the sizes on unchanged.
    unsafe {
        macro_rules! by_rows {
            ($($r:literal)*) => {
                match rows {
                    $($r => panel_avx512::<$r>(xt, k, panel, tile),)*
                    _ => unreachable!("multiply_panel checks 1 <= rows <= ROW_BLOCK"),
                }
            };
        }
        by_rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24)
    }
}

/// R rows (k-major) against one panel: per step of k, one load widening 16 binary16 weights and R fused
/// multiply-adds whose x operand is broadcast from memory, at offsets fixed at compile time.
///
/// # Safety
/// The CPU has the target features below, and the slices hold the sizes stated.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn panel_avx512<const R: usize>(xt: &[f32], k: usize, panel: &[u16], tile: &mut [f32]) {
    // SAFETY: reads stay below R * k of `xt` and k * PANEL of `panel`, writes below R * PANEL of `tile`
    // (the debug assertion; `multiply_panel` checks the sizes before dispatching here).
    unsafe {
        use std::arch::x86_64::*;
        debug_assert!(xt.len() >= R * k && panel.len() >= k * PANEL && tile.len() >= R * PANEL);
        let mut acc = [_mm512_setzero_ps(); R];
        let w = panel.as_ptr();
        let xp = xt.as_ptr();
        for kk in 0..k {
            let wv = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(kk * PANEL) as *const __m256i));
            let step = xp.add(kk * R);
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*step.add(r)), wv, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * PANEL), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// x @ w + bias in f64, the slow way.
    fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                let dot: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[i * n + c] as f64).sum();
                out[r * n + c] = dot + bias.map_or(0.0, |b| b[c] as f64);
            }
        }
        out
    }

    #[test]
    fn both_paths_multiply_and_add_the_bias_like_the_reference() {
        // 37 columns: two whole panels and a partial one; row counts that split into blocks of rows
        // unevenly, and on both sides of MAX_ROWS.
        let (k, n) = (53, 37);
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let w: Vec<f32> = (0..k * n).map(value).collect();
        let bias: Vec<f32> = (0..n).map(|i| value(i + 3) * 3.0).collect();
        let weight = Weight::new(&Tensor::from_vec(w.clone(), (k, n), &Device::Cpu).unwrap()).unwrap();
        // The few-rows path multiplies by the weights rounded to binary16: its reference does too.
        let w16: Vec<f32> = w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        assert!(
            w16.iter().zip(&w).any(|(a, b)| a != b),
            "the values must not all be exact in binary16"
        );
        for m in [1, 5, 6, 7, 15, 16, 17, 20, 24, 25, 30, 33, MAX_ROWS, MAX_ROWS + 1, 200] {
            let x: Vec<f32> = (0..m * k).map(|i| value(i + 11)).collect();
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let w = if m <= MAX_ROWS { &w16 } else { &w };
            for bias in [None, Some(bias.as_slice())] {
                let got = xt
                    .apply_op1_no_bwd(&Matmul {
                        weight: &weight,
                        bias,
                        precision: Precision::F32,
                    })
                    .unwrap();
                assert_eq!(got.dims(), &[m, n]);
                let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (i, (g, want)) in got.iter().zip(reference(&x, w, bias, m, k, n)).enumerate() {
                    assert!(
                        (*g as f64 - want).abs() < 1e-4,
                        "m={m}, bias={}: element {i} is {g}, want {want}",
                        bias.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn every_panel_kernel_this_cpu_has_computes_the_same_tile() {
        // Each machine takes the widest kernel it has (AVX-512, else AVX2 in blocks of six rows, else
        // portable), so every one it can run is checked here, for every row count a pass may have.
        let k = 29;
        let value = |i: usize| ((i * 104_729 % 997) as f32 / 498.5) - 1.0;
        let panel: Vec<u16> = (0..k * PANEL)
            .map(|i| half::f16::from_f32(value(i)).to_bits())
            .collect();
        type Kernel = fn(&[f32], usize, usize, &[u16], &mut [f32]);
        let mut kernels: Vec<(&str, Kernel)> = vec![("portable", multiply_panel_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_fma_f16c() {
                // SAFETY: detected above; the slices hold these rows.
                kernels.push(("avx2", |x, rows, k, panel, tile| unsafe {
                    multiply_panel_avx2(x, rows, k, panel, tile)
                }));
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: detected above; the slices hold these rows.
                kernels.push(("avx512", |x, rows, k, panel, tile| unsafe {
                    multiply_panel_avx512(x, rows, k, panel, tile)
                }));
            }
        }
        kernels.push(("dispatched", |x, rows, k, panel, tile| {
            multiply_panel(x, rows, k, panel, tile.try_into().expect("a whole tile"))
        }));
        for rows in 1..=ROW_BLOCK {
            let x: Vec<f32> = (0..rows * k).map(|i| value(i + 5)).collect();
            let xt = transposed_blocks(&x, rows, k, rows);
            for (name, kernel) in &kernels {
                let mut tile = [f32::NAN; ROW_BLOCK * PANEL];
                kernel(&xt, rows, k, &panel, &mut tile);
                for (i, &got) in tile[..rows * PANEL].iter().enumerate() {
                    let (r, c) = (i / PANEL, i % PANEL);
                    let want: f64 = (0..k)
                        .map(|kk| x[r * k + kk] as f64 * half::f16::from_bits(panel[kk * PANEL + c]).to_f64())
                        .sum();
                    assert!(
                        (got as f64 - want).abs() < 1e-4,
                        "{name}, rows={rows}, element {i}: {got} against {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn transposed_blocks_store_each_block_k_major_in_place() {
        // 5 rows of 3 in blocks of 2: rows 0-1, 2-3, then 4 alone.
        let x: Vec<f32> = (0..15).map(|i| i as f32).collect();
        let xt = transposed_blocks(&x, 5, 3, 2);
        assert_eq!(xt, [0., 3., 1., 4., 2., 5., 6., 9., 7., 10., 8., 11., 12., 13., 14.]);
        // Longer rows, split across tasks, in blocks of 15.
        let (m, k) = (30, 3 * TRANSPOSE_STEPS + 7);
        let x: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
        let xt = transposed_blocks(&x, m, k, 15);
        for r in 0..m {
            let (r0, rows) = (r / 15 * 15, 15);
            for kk in 0..k {
                assert_eq!(xt[r0 * k + kk * rows + (r - r0)], x[r * k + kk], "row {r}, column {kk}");
            }
        }
    }

    #[test]
    fn a_mismatched_input_or_bias_is_an_error() {
        let weight = Weight::new(&Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
        let x = Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = x
            .apply_op1_no_bwd(&Matmul {
                weight: &weight,
                bias: None,
                precision: Precision::F32,
            })
            .unwrap_err();
        assert!(err.to_string().contains("5 columns"), "{err}");
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let bias = [0.0f32; 2];
        let err = x
            .apply_op1_no_bwd(&Matmul {
                weight: &weight,
                bias: Some(&bias),
                precision: Precision::F32,
            })
            .unwrap_err();
        assert!(err.to_string().contains("one value per output column"), "{err}");
    }
}

//! `x @ w (+ bias)` against a fixed weight matrix, as one Candle op that writes its output once.
//! Many rows (a batch) go to the `gemm` crate directly: Candle's own matmul zeroes its output first and
//! the bias would be another pass over it; here the output starts uninitialised, or filled with the
//! bias for the multiply to accumulate onto. A few rows (a query, a short batch) take a packed-panel
//! kernel instead: a general GEMM packs the whole weight matrix on every call and wakes its thread pool,
//! which for a 15-token query costs more than the arithmetic. For that path the weights are packed once
//! at load, in 16-column panels laid out for sequential streaming, and each panel is multiplied against
//! all rows while it sits in cache.
//!
//! The panels hold the weights in half precision (IEEE binary16), widened to f32 as they are loaded;
//! products and sums stay in f32. Why: a query multiplies ~20 rows against every weight once, so it
//! streams the whole model from memory (88 MB in f32, 44 MB here) for little arithmetic; halving the
//! bytes took a query from ~4.3 to ~3.75 ms back to back (README, embedder section). Rounding a weight
//! to binary16 changes it by at most 2^-11 of itself; tests/embedder.rs holds a text embedded alone
//! (this path) to cosine >= 0.99999 with the same text embedded in a batch (the f32 GEMM), and to
//! 0.9999 with sentence-transformers' vector.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{contiguous, SharedOut};

/// Columns per panel: two AVX2 registers of eight floats.
const PANEL: usize = 16;
/// Rows per register block: 6 rows x 2 registers of accumulators leave room for the loads.
const ROW_BLOCK: usize = 6;
/// Up to this many rows the packed kernel beats the general GEMM on this model's shapes (measured).
const MAX_ROWS: usize = 48;

/// A (k, n) weight matrix in both layouts: row-major f32 for the general GEMM, and as n/16 panels of
/// (k, 16) binary16 values (bit patterns), zero-padded to a whole panel, for a few rows.
pub(crate) struct Weight {
    k: usize,
    n: usize,
    rows: Vec<f32>,
    panels: Vec<u16>,
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
        Ok(Weight { k, n, rows, panels })
    }

    /// `x @ self + bias` (no bias when `None`).
    pub(crate) fn apply(&self, x: &Tensor, bias: Option<&[f32]>) -> candle_core::Result<Tensor> {
        x.apply_op1_no_bwd(&Matmul { weight: self, bias })
    }
}

/// `x @ w + bias` for x of shape (m, k); no bias when `bias` is `None`.
pub(crate) struct Matmul<'a> {
    pub weight: &'a Weight,
    pub bias: Option<&'a [f32]>,
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
        let out = if m <= MAX_ROWS {
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
        (0..n_panels).into_par_iter().with_min_len(8).for_each(|p| {
            let shared = &shared;
            let panel = &w.panels[p * k * PANEL..(p + 1) * k * PANEL];
            let cols = PANEL.min(n - p * PANEL);
            let mut tile = [0.0f32; ROW_BLOCK * PANEL];
            for r0 in (0..m).step_by(ROW_BLOCK) {
                let rows = ROW_BLOCK.min(m - r0);
                multiply_panel(&x[r0 * k..(r0 + rows) * k], rows, k, panel, &mut tile);
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

/// tile[r][0..16] = sum over kk of x[r][kk] * panel[kk][0..16], for up to six rows.
fn multiply_panel(x: &[f32], rows: usize, k: usize, panel: &[u16], tile: &mut [f32; ROW_BLOCK * PANEL]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU has AVX2, FMA and F16C.
            return unsafe { multiply_panel_avx2(x, rows, k, panel, tile) };
        }
    }
    multiply_panel_portable(x, rows, k, panel, tile)
}

fn multiply_panel_portable(x: &[f32], rows: usize, k: usize, panel: &[u16], tile: &mut [f32; ROW_BLOCK * PANEL]) {
    tile.fill(0.0);
    let mut wide = [0.0f32; PANEL];
    for kk in 0..k {
        for (w, &h) in wide.iter_mut().zip(&panel[kk * PANEL..(kk + 1) * PANEL]) {
            *w = half::f16::from_bits(h).to_f32();
        }
        for r in 0..rows {
            let xv = x[r * k + kk];
            for c in 0..PANEL {
                tile[r * PANEL + c] += xv * wide[c];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multiply_panel_avx2(x: &[f32], rows: usize, k: usize, panel: &[u16], tile: &mut [f32; ROW_BLOCK * PANEL]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; ROW_BLOCK];
    let w = panel.as_ptr();
    let xp = x.as_ptr();
    for kk in 0..k {
        let w0 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(kk * PANEL) as *const __m128i));
        let w1 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(kk * PANEL + 8) as *const __m128i));
        // The row count is fixed per call; the branches predict perfectly.
        for (r, a) in acc.iter_mut().enumerate().take(rows) {
            let xv = _mm256_set1_ps(*xp.add(r * k + kk));
            a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
            a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
        }
    }
    for (r, a) in acc.iter().enumerate().take(rows) {
        _mm256_storeu_ps(tile.as_mut_ptr().add(r * PANEL), a[0]);
        _mm256_storeu_ps(tile.as_mut_ptr().add(r * PANEL + 8), a[1]);
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
        // 37 columns: two whole panels and a partial one; row counts on both sides of MAX_ROWS.
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
        for m in [1, 5, 6, 7, MAX_ROWS, MAX_ROWS + 1, 200] {
            let x: Vec<f32> = (0..m * k).map(|i| value(i + 11)).collect();
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let w = if m <= MAX_ROWS { &w16 } else { &w };
            for bias in [None, Some(bias.as_slice())] {
                let got = xt.apply_op1_no_bwd(&Matmul { weight: &weight, bias }).unwrap();
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
    fn the_portable_panel_kernel_matches_the_vector_one() {
        // Machines without AVX2, FMA and F16C take the portable kernel: it must compute the same tile.
        let k = 29;
        let value = |i: usize| ((i * 104_729 % 997) as f32 / 498.5) - 1.0;
        let panel: Vec<u16> = (0..k * PANEL)
            .map(|i| half::f16::from_f32(value(i)).to_bits())
            .collect();
        for rows in 1..=ROW_BLOCK {
            let x: Vec<f32> = (0..rows * k).map(|i| value(i + 5)).collect();
            let (mut portable, mut dispatched) = ([f32::NAN; ROW_BLOCK * PANEL], [f32::NAN; ROW_BLOCK * PANEL]);
            multiply_panel_portable(&x, rows, k, &panel, &mut portable);
            multiply_panel(&x, rows, k, &panel, &mut dispatched);
            for i in 0..rows * PANEL {
                let (r, c) = (i / PANEL, i % PANEL);
                let want: f64 = (0..k)
                    .map(|kk| x[r * k + kk] as f64 * half::f16::from_bits(panel[kk * PANEL + c]).to_f64())
                    .sum();
                assert!(
                    (portable[i] as f64 - want).abs() < 1e-4,
                    "portable, rows={rows}, element {i}"
                );
                assert!(
                    (dispatched[i] as f64 - want).abs() < 1e-4,
                    "dispatched, rows={rows}, element {i}"
                );
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
            })
            .unwrap_err();
        assert!(err.to_string().contains("5 columns"), "{err}");
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let bias = [0.0f32; 2];
        let err = x
            .apply_op1_no_bwd(&Matmul {
                weight: &weight,
                bias: Some(&bias),
            })
            .unwrap_err();
        assert!(err.to_string().contains("one value per output column"), "{err}");
    }
}

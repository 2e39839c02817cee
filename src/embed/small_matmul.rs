//! Matrix multiply for a few rows (a query, a short batch) against a fixed weight matrix. A general
//! GEMM packs the whole weight matrix on every call and wakes its thread pool, which for a 15-token query
//! costs more than the arithmetic. Here the weights are packed once at load, in 16-column panels laid out
//! for sequential streaming, and each panel is multiplied against all rows while it sits in cache.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Columns per panel: two AVX2 registers of eight floats.
const PANEL: usize = 16;
/// Rows per register block: 6 rows x 2 registers of accumulators leave room for the loads.
const ROW_BLOCK: usize = 6;
/// Up to this many rows the packed kernel beats the general GEMM on this model's shapes (measured).
pub(crate) const MAX_ROWS: usize = 48;

/// A (k, n) weight matrix repacked as n/16 panels of (k, 16), zero-padded to a whole panel.
pub(crate) struct PackedWeights {
    k: usize,
    n: usize,
    panels: Vec<f32>,
}

impl PackedWeights {
    /// `w` is (k, n), row-major: the layer's weight already transposed for `x @ w`.
    pub(crate) fn pack(w: &Tensor) -> candle_core::Result<Self> {
        let (k, n) = w.dims2()?;
        let data = w.flatten_all()?.to_vec1::<f32>()?;
        let n_panels = n.div_ceil(PANEL);
        let mut panels = vec![0.0f32; n_panels * k * PANEL];
        for p in 0..n_panels {
            for kk in 0..k {
                for c in 0..PANEL.min(n - p * PANEL) {
                    panels[(p * k + kk) * PANEL + c] = data[kk * n + p * PANEL + c];
                }
            }
        }
        Ok(PackedWeights { k, n, panels })
    }
}

struct SharedOut(*mut f32);
// SAFETY: each task writes only its own panel's columns of the output.
unsafe impl Sync for SharedOut {}

/// `x @ w` for x of shape (m, k) with m small.
pub(crate) struct SmallMatmul<'a> {
    pub weights: &'a PackedWeights,
}

impl CustomOp1 for SmallMatmul<'_> {
    fn name(&self) -> &'static str {
        "small-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = layout.shape().dims2()?;
        let w = self.weights;
        if k != w.k {
            candle_core::bail!("small-matmul: x has {k} columns but the weights have {} rows", w.k);
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("small-matmul needs a contiguous input");
        };
        let x = &storage.as_slice::<f32>()?[start..end];
        let n = w.n;
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
                    // SAFETY: row r0 + r, columns p*16 .. p*16 + cols lie inside `out` and belong to this panel.
                    unsafe {
                        let dst = shared.0.add((r0 + r) * n + p * PANEL);
                        std::ptr::copy_nonoverlapping(tile[r * PANEL..].as_ptr(), dst, cols);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// tile[r][0..16] = sum over kk of x[r][kk] * panel[kk][0..16], for up to six rows.
fn multiply_panel(x: &[f32], rows: usize, k: usize, panel: &[f32], tile: &mut [f32; ROW_BLOCK * PANEL]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { multiply_panel_avx2(x, rows, k, panel, tile) };
        }
    }
    tile.fill(0.0);
    for r in 0..rows {
        for kk in 0..k {
            let xv = x[r * k + kk];
            for c in 0..PANEL {
                tile[r * PANEL + c] += xv * panel[kk * PANEL + c];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn multiply_panel_avx2(x: &[f32], rows: usize, k: usize, panel: &[f32], tile: &mut [f32; ROW_BLOCK * PANEL]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; ROW_BLOCK];
    let w = panel.as_ptr();
    let xp = x.as_ptr();
    for kk in 0..k {
        let w0 = _mm256_loadu_ps(w.add(kk * PANEL));
        let w1 = _mm256_loadu_ps(w.add(kk * PANEL + 8));
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

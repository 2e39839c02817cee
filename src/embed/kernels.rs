//! Fused CPU kernels for the encoder, as Candle custom ops: bias + GELU, bias + residual + layer norm,
//! and unpadded multi-head attention. They exist because the straightforward path spends a third of its
//! time outside matrix multiply: a scalar `erf` and `exp` per element, and a fresh tensor per step.
//! Element loops are written plainly and compiled twice, once for AVX2+FMA, chosen at run time.

use candle_core::{CpuStorage, CustomOp1, InplaceOp1, InplaceOp2, Layout, Result, Shape};
use rayon::prelude::*;

/// Rows per parallel task: big enough that scheduling costs little, small enough to spread work.
const ROWS_PER_TASK: usize = 16;

macro_rules! dispatch {
    ($name:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the AVX2 build of the function was compiled for.
                unsafe { avx2::$name($($arg),*) }
            } else {
                portable::$name($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            portable::$name($($arg),*)
        }
    }};
}

macro_rules! element_kernels {
    ($madd:expr $(, $attr:meta)?) => {
        /// a * b + c: one fused instruction where the build has FMA, else a multiply and an add (a
        /// software fused multiply-add would be far slower).
        #[inline(always)]
        fn madd(a: f32, b: f32, c: f32) -> f32 {
            $madd(a, b, c)
        }

        /// exp(x) to about 2 ulp for the range a softmax or GELU sees; branch-free so that it vectorises.
        #[inline(always)]
        pub fn fast_exp(x: f32) -> f32 {
            // 1.5 * 2^23: adding it rounds to the nearest integer (ties to even) and leaves that integer,
            // in two's complement, in the low mantissa bits. Reading k from there keeps the whole
            // function in vector registers; `k as i32` would be a saturating cast, which LLVM compiles
            // lane by lane (a profile had it as most of the GELU and softmax time).
            const ROUNDER: f32 = 12_582_912.0;
            let x = x.clamp(-87.0, 88.0);
            // exp(x) = 2^k * exp(r), r = x - k ln2 in [-ln2/2, ln2/2].
            let shifted = madd(x, std::f32::consts::LOG2_E, ROUNDER);
            let k = shifted - ROUNDER;
            let r = madd(-k, 1.428_606_8e-6, madd(-k, 0.693_145_75, x));
            let mut p = 0.001_388_922_3;
            for c in [0.008_333_452, 0.041_666_41, 0.166_666_67, 0.5, 1.0, 1.0] {
                p = madd(p, r, c);
            }
            // k sits in the low 9 bits of `shifted` (|k| <= 127); shifting by 23 drops everything above.
            f32::from_bits(p.to_bits().wrapping_add(shifted.to_bits() << 23))
        }

        /// erf(x) with absolute error below 5e-7 in f32 (Abramowitz and Stegun 7.1.26, refined
        /// coefficients).
        #[inline(always)]
        pub fn fast_erf(x: f32) -> f32 {
            let a = x.abs();
            let t = 1.0 / madd(0.327_591_1, a, 1.0);
            let mut poly = 1.061_405_4;
            for c in [-1.453_152_1, 1.421_413_8, -0.284_496_72, 0.254_829_6] {
                poly = madd(poly, t, c);
            }
            let y = madd(-poly * t, fast_exp(-a * a), 1.0);
            y.copysign(x)
        }

        $(#[$attr])?
        pub fn bias_gelu(row: &mut [f32], bias: &[f32]) {
            for (v, b) in row.iter_mut().zip(bias) {
                let x = *v + b;
                *v = 0.5 * x * (1.0 + fast_erf(x * std::f32::consts::FRAC_1_SQRT_2));
            }
        }

        /// Sum in eight independent lanes: a single running sum is a serial dependency chain that the
        /// compiler may not reorder, so it would never vectorise.
        $(#[$attr])?
        #[inline]
        pub fn sum(values: &[f32]) -> f32 {
            let mut lanes = [0.0f32; 8];
            let chunks = values.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().sum();
            for chunk in chunks {
                for i in 0..8 {
                    lanes[i] += chunk[i];
                }
            }
            lanes.iter().sum::<f32>() + tail
        }

        $(#[$attr])?
        #[inline]
        pub fn max(values: &[f32]) -> f32 {
            let mut lanes = [f32::NEG_INFINITY; 8];
            let chunks = values.chunks_exact(8);
            let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for chunk in chunks {
                for i in 0..8 {
                    lanes[i] = if chunk[i] > lanes[i] { chunk[i] } else { lanes[i] };
                }
            }
            lanes.iter().copied().fold(tail, f32::max)
        }

        /// `row = layer_norm(row + bias + residual)`, in place.
        $(#[$attr])?
        pub fn bias_residual_layer_norm(row: &mut [f32], residual: &[f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
            for i in 0..row.len() {
                row[i] += bias[i] + residual[i];
            }
            layer_norm(row, gamma, beta, eps);
        }

        $(#[$attr])?
        #[inline]
        pub fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
            let n = row.len() as f32;
            let mean = sum(row) / n;
            for v in row.iter_mut() {
                *v -= mean;
            }
            let mut squares = [0.0f32; 8];
            let chunks = row.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
            for chunk in chunks {
                for i in 0..8 {
                    squares[i] = madd(chunk[i], chunk[i], squares[i]);
                }
            }
            let var = (squares.iter().sum::<f32>() + tail) / n;
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..row.len() {
                row[i] = madd(row[i] * inv, gamma[i], beta[i]);
            }
        }

        $(#[$attr])?
        pub fn softmax_row(row: &mut [f32]) {
            let max = max(row);
            for v in row.iter_mut() {
                *v = fast_exp(*v - max);
            }
            let inv = 1.0 / sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    };
}

mod portable {
    element_kernels!(|a: f32, b: f32, c: f32| a * b + c);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    element_kernels!(f32::mul_add, target_feature(enable = "avx2,fma"));
}

pub(crate) fn layer_norm_rows(data: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    data.par_chunks_mut(width * ROWS_PER_TASK).for_each(|rows| {
        for row in rows.chunks_mut(width) {
            dispatch!(layer_norm(row, gamma, beta, eps));
        }
    });
}

pub(super) fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op} needs a contiguous input"),
    }
}

fn contiguous_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout, op: &str) -> Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&mut data[start..end]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op} needs a contiguous input"),
        (_, _) => candle_core::bail!("{op} needs an f32 tensor"),
    }
}

/// `gelu(x + bias)` over rows of a (tokens, width) matrix, in place: the matrix is a matmul's fresh
/// output that nothing else holds, so copying it first would be a wasted pass.
pub(crate) struct BiasGelu<'a> {
    pub bias: &'a [f32],
}

impl InplaceOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let data = contiguous_mut(storage, layout, self.name())?;
        let width = self.bias.len();
        data.par_chunks_mut(width * ROWS_PER_TASK).for_each(|rows| {
            for row in rows.chunks_mut(width) {
                dispatch!(bias_gelu(row, self.bias));
            }
        });
        Ok(())
    }
}

/// `x = layer_norm(x + bias + residual)` over rows, in place on `x` (the op's first input, a matmul's
/// fresh output); `residual` is its second.
pub(crate) struct BiasResidualLayerNorm<'a> {
    pub bias: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

impl InplaceOp2 for BiasResidualLayerNorm<'_> {
    fn name(&self) -> &'static str {
        "bias-residual-layer-norm"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let residual = contiguous(s2, l2, self.name())?;
        let x = contiguous_mut(s1, l1, self.name())?;
        if x.len() != residual.len() {
            candle_core::bail!("{}: x and the residual differ in shape", self.name());
        }
        let width = self.bias.len();
        x.par_chunks_mut(width * ROWS_PER_TASK)
            .zip(residual.par_chunks(width * ROWS_PER_TASK))
            .for_each(|(rows, residual)| {
                for (row, residual) in rows.chunks_mut(width).zip(residual.chunks(width)) {
                    dispatch!(bias_residual_layer_norm(
                        row, residual, self.bias, self.gamma, self.beta, self.eps
                    ));
                }
            });
        Ok(())
    }
}

/// Multi-head self-attention over packed, unpadded sequences. The input is the fused QKV projection
/// (tokens, 3 x hidden) with its bias; sequence `i` owns rows `offsets[i]..offsets[i+1]`. Each
/// (sequence, head) pair is independent, so they run in parallel, each with single-threaded matrix
/// multiplies on strided views: no padding, no mask, no transposed copies.
pub(crate) struct UnpaddedAttention<'a> {
    pub offsets: &'a [usize],
    pub heads: usize,
}

/// An output buffer that parallel tasks write through a raw pointer.
pub(super) struct SharedOut(pub(super) *mut f32);
// SAFETY: every user has each task write a disjoint set of rows x columns of the output.
unsafe impl Sync for SharedOut {}

impl CustomOp1 for UnpaddedAttention<'_> {
    fn name(&self) -> &'static str {
        "unpadded-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (tokens, qkv_width) = layout.shape().dims2()?;
        let hidden = qkv_width / 3;
        if hidden * 3 != qkv_width || hidden % self.heads != 0 {
            candle_core::bail!(
                "{}: {qkv_width} columns are not Q, K and V of {} heads",
                self.name(),
                self.heads
            );
        }
        let head_dim = hidden / self.heads;
        if self.offsets.last() != Some(&tokens) {
            candle_core::bail!("{}: the sequences do not cover the {tokens} rows", self.name());
        }
        let qkv = contiguous(storage, layout, self.name())?;
        // Every element is written below by one (sequence, head) task's P V product.
        let mut out: Vec<f32> = Vec::with_capacity(tokens * hidden);
        let shared = SharedOut(out.as_mut_ptr());
        let scale = 1.0 / (head_dim as f32).sqrt();
        let tasks: Vec<(usize, usize)> = (0..self.offsets.len() - 1)
            .flat_map(|s| (0..self.heads).map(move |h| (s, h)))
            .collect();
        tasks.par_iter().for_each(|&(s, h)| {
            let start = self.offsets[s];
            let len = self.offsets[s + 1] - start;
            let mut scores: Vec<f32> = Vec::with_capacity(len * len);
            let base = start * qkv_width + h * head_dim;
            let (q, k, v) = (&qkv[base..], &qkv[base + hidden..], &qkv[base + 2 * hidden..]);
            let shared = &shared;
            // SAFETY: all views stay inside `qkv`, `scores` and this task's rows/columns of `out`.
            unsafe {
                // scores = scale * Q K^T, reading K^T through swapped strides.
                gemm::gemm(
                    len,
                    len,
                    head_dim,
                    scores.as_mut_ptr(),
                    1,
                    len as isize,
                    false,
                    q.as_ptr(),
                    1,
                    qkv_width as isize,
                    k.as_ptr(),
                    qkv_width as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                scores.set_len(len * len);
            }
            for row in scores.chunks_mut(len) {
                dispatch!(softmax_row(row));
            }
            // SAFETY: as above; the probabilities read are the len x len scores just written.
            unsafe {
                // out[rows of s, columns of h] = P V
                gemm::gemm(
                    len,
                    head_dim,
                    len,
                    shared.0.add(start * hidden + h * head_dim),
                    1,
                    hidden as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    len as isize,
                    v.as_ptr(),
                    1,
                    qkv_width as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
        // SAFETY: the sequences cover every row (checked above) and the heads every column.
        unsafe { out.set_len(tokens * hidden) };
        Ok((CpuStorage::F32(out), Shape::from((tokens, hidden))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both builds of exp and erf: the portable one (multiply, then add) and the FMA one. Called from
    /// here the FMA build's fused multiply-adds may go through software, which changes speed, not values.
    type Build = (&'static str, fn(f32) -> f32, fn(f32) -> f32);

    fn builds() -> Vec<Build> {
        let mut builds: Vec<Build> = vec![("portable", portable::fast_exp, portable::fast_erf)];
        #[cfg(target_arch = "x86_64")]
        builds.push(("avx2", avx2::fast_exp, avx2::fast_erf));
        builds
    }

    #[test]
    fn fast_exp_and_erf_are_accurate() {
        for (build, fast_exp, fast_erf) in builds() {
            let mut x = -20.0f32;
            while x < 20.0 {
                let e = fast_exp(x);
                assert!(
                    (e - x.exp()).abs() <= 4e-7 * x.exp(),
                    "{build}: exp({x}) = {e}, want {}",
                    x.exp()
                );
                x += 0.0137;
            }
            for i in -3000..3000 {
                let x = i as f32 / 1000.0;
                let want = taylor_erf(x as f64);
                assert!(
                    (fast_erf(x) as f64 - want).abs() < 5e-7,
                    "{build}: erf({x}) = {}, want {want}",
                    fast_erf(x)
                );
            }
            for i in 3000..9000 {
                // erfc(3) is 2.2e-5, and erf only approaches 1 from below beyond it.
                let x = i as f32 / 1000.0;
                assert!(
                    fast_erf(x) <= 1.0 && fast_erf(x) >= 1.0 - 2.3e-5 && fast_erf(-x) == -fast_erf(x),
                    "{build}: erf({x}) = {}",
                    fast_erf(x)
                );
            }
        }
    }

    #[test]
    fn exp_stays_finite_and_monotonic_at_the_ends_of_its_range() {
        for (build, fast_exp, _) in builds() {
            // The exponent step holds k in 9 bits: the clamp keeps it there; past it the result saturates.
            assert_eq!(fast_exp(-1000.0), fast_exp(-87.0), "{build}");
            assert_eq!(fast_exp(1000.0), fast_exp(88.0), "{build}");
            assert!(fast_exp(88.0).is_finite() && fast_exp(88.0) > 1e38, "{build}");
            let mut previous = 0.0f32;
            for i in -870..=880 {
                let e = fast_exp(i as f32 / 10.0);
                assert!(e >= previous, "{build}: exp is not monotonic at {}", i as f32 / 10.0);
                previous = e;
            }
        }
    }

    /// erf by its Taylor series, accurate in f64 for |x| <= 3.
    fn taylor_erf(x: f64) -> f64 {
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 || n < 10.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 400.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}

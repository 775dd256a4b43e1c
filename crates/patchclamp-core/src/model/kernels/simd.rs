//! The vector building blocks every kernel shares: a branch-free exponential and sixteen-lane
//! reductions the compiler keeps in one register (fixed order, so deterministic), and the
//! chunk size of parallel loops.

/// Elements per parallel chunk: big enough to amortise scheduling.
pub const CHUNK: usize = 1 << 14;

/// `eˣ` to about 1 ulp (Cephes' polynomial), written without branches or calls so the loops
/// around it vectorise; exactly 0 below -88 (so masked attention stays exactly zero).
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * C1 - n * C2;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r * r + r + 1.0;
    // The integer n sits in the low mantissa bits of `shifted`; reading it from there instead
    // of `n as i32` keeps the loop in vector registers (Rust's saturating float-to-int cast is
    // scalarised lane by lane). The same bits either way.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    if x < -88.0 {
        0.0
    } else {
        p * scale
    }
}

/// Lanes for reductions: independent accumulators the compiler keeps in one vector register.
pub const LANES: usize = 16;

/// Largest element, in sixteen lanes (vectorises, unlike a fold of `f32::max`).
#[inline(always)]
pub fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    // A halving tree keeps the horizontal step in vector registers (short rows pay for it).
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] = if acc[i + w] > acc[i] {
                acc[i + w]
            } else {
                acc[i]
            };
        }
    }
    rest.iter().fold(acc[0], |m, &v| if v > m { v } else { m })
}

/// Sum in sixteen lanes (vectorises; a fixed order, so deterministic).
#[inline(always)]
pub fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    rest.iter().sum::<f32>() + acc[0]
}

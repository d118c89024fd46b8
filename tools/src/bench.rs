//! `fedctl bench aggregate`: aggregation throughput next to a memory-bandwidth reference
//! measured in the same run, on the same buffers.

use anyhow::{Result, bail};
use model::{ParamSet, StreamingFedAvg, TensorSpec};
use std::hint::black_box;
use std::time::Instant;

/// Best-of-`reps` wall time of `f`, in seconds.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// A sum that the compiler can vectorize: eight independent accumulators.
fn sum8(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Runs the aggregation benchmark and prints one machine-readable line per measurement.
pub fn aggregate(clients: usize, params: usize, reps: usize) -> Result<()> {
    if clients == 0 || params == 0 {
        bail!("--clients and --params must be positive");
    }
    let specs = vec![TensorSpec::new("w", vec![params])];
    let updates: Vec<ParamSet> = (0..clients)
        .map(|c| {
            let values = (0..params)
                .map(|i| ((i + c) % 97) as f32 * 0.01)
                .collect();
            ParamSet::new(specs.clone(), values)
        })
        .collect::<Result<_, _>>()?;
    let weights: Vec<u64> = (0..clients as u64).map(|c| 100 + c).collect();
    let input_bytes = (clients * params * 4) as f64;
    let gbs = |secs: f64| input_bytes / secs / 1e9;

    // Reference 1: copy every update once (reads and writes each byte).
    let mut dst = vec![0f32; params];
    let copy = best_of(reps, || {
        for u in &updates {
            dst.copy_from_slice(u.values());
            black_box(&dst);
        }
    });
    // Reference 2: sum every update once (reads each byte once: the floor of any aggregation).
    let sum = best_of(reps, || {
        for u in &updates {
            black_box(sum8(u.values()));
        }
    });
    let pairs: Vec<(&ParamSet, u64)> = updates.iter().zip(weights.iter().copied()).collect();
    let streaming = best_of(reps, || {
        let mut acc = StreamingFedAvg::new(specs.clone());
        for (u, w) in &pairs {
            let _ = acc.add(u, *w);
        }
        black_box(acc.finish().ok());
    });
    let batch = best_of(reps, || {
        black_box(model::aggregate::fedavg_blocked(&pairs).ok());
    });
    let total: u64 = weights.iter().sum();
    let scale: Vec<f32> = weights.iter().map(|w| (*w as f64 / total as f64) as f32).collect();
    let mut out = vec![0f32; params];
    let kernel = best_of(reps, || {
        out.fill(0.0);
        model::aggregate::fold_blocked(&pairs, &scale, &mut out);
        black_box(&out);
    });
    // The two paths must agree.
    let a = model::aggregate::fedavg_blocked(&pairs)?;
    let b = model::fedavg(&pairs)?;
    let max_diff = a
        .values()
        .iter()
        .zip(b.values())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    if max_diff > 1e-4 {
        bail!("blocked and reference FedAvg disagree by {max_diff}");
    }
    let reference = gbs(copy).max(gbs(sum));
    // `fedavg_gbs` folds into an accumulator allocated once (what a long-running anchor
    // does); `fedavg_alloc_gbs` also allocates and page-faults a fresh output each time.
    println!(
        "aggregate: clients={clients} params={params} input_mb={:.1} copy_gbs={:.2} sum_gbs={:.2} fedavg_gbs={:.2} fedavg_vs_reference={:.0}% fedavg_alloc_gbs={:.2} streaming_f64_gbs={:.2}",
        input_bytes / 1e6,
        gbs(copy),
        gbs(sum),
        gbs(kernel),
        100.0 * gbs(kernel) / reference,
        gbs(batch),
        gbs(streaming),
    );
    Ok(())
}

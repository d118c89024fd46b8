//! Criterion benches of the aggregation functions and the parameter codec.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use model::{ParamSet, StreamingFedAvg, TensorSpec};
use std::hint::black_box;

const PARAMS: usize = 1_000_000;
const CLIENTS: usize = 10;

fn updates() -> Vec<ParamSet> {
    (0..CLIENTS)
        .map(|c| {
            let values = (0..PARAMS).map(|i| ((i + c) % 101) as f32 * 0.01).collect();
            ParamSet::new(vec![TensorSpec::new("w", vec![PARAMS])], values).unwrap()
        })
        .collect()
}

fn aggregation(c: &mut Criterion) {
    let sets = updates();
    let pairs: Vec<(&ParamSet, u64)> = sets.iter().zip(1u64..).collect();
    let refs: Vec<&ParamSet> = sets.iter().collect();
    let mut g = c.benchmark_group("aggregate_10x1M");
    g.throughput(Throughput::Bytes((CLIENTS * PARAMS * 4) as u64));
    g.sample_size(10);
    g.bench_function("fedavg", |b| {
        b.iter(|| model::fedavg(black_box(&pairs)).unwrap())
    });
    g.bench_function("fedavg_blocked", |b| {
        b.iter(|| model::aggregate::fedavg_blocked(black_box(&pairs)).unwrap())
    });
    g.bench_function("streaming_fedavg", |b| {
        b.iter(|| {
            let mut acc = StreamingFedAvg::new(sets[0].specs().to_vec());
            for (u, w) in &pairs {
                acc.add(u, *w).unwrap();
            }
            acc.finish().unwrap()
        })
    });
    g.bench_function("coordinate_median", |b| {
        b.iter(|| model::coordinate_median(black_box(&refs)).unwrap())
    });
    g.bench_function("trimmed_mean_20pct", |b| {
        b.iter(|| model::trimmed_mean(black_box(&refs), 0.2).unwrap())
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let set = &updates()[0];
    let bytes = set.to_bytes();
    let mut g = c.benchmark_group("paramset_1M");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("to_bytes", |b| b.iter(|| black_box(set).to_bytes()));
    g.bench_function("from_bytes", |b| {
        b.iter(|| ParamSet::from_bytes(black_box(&bytes)).unwrap())
    });
    g.bench_function("digest", |b| b.iter(|| black_box(set).digest()));
    g.finish();
}

criterion_group!(benches, aggregation, codec);
criterion_main!(benches);

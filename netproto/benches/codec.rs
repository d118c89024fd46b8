//! Criterion benches of the wire codecs: control envelopes and data-plane frames.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use netproto::wire::{
    DataRequest, Envelope, Frame, Hyper, Message, NodeId, RoundPlan, UpdateHeader, digest_of,
};
use std::hint::black_box;

fn plan(participants: usize) -> Envelope {
    Envelope::new(
        "bench",
        &NodeId::new("12D3KooWCjKYWARkZBDQv9UwPwLYyMfJVGQyGk5fDojmFbpppYjQ"),
        Message::RoundOpened(RoundPlan {
            round: 42,
            term: 7,
            coordinator: NodeId::new("12D3KooWA1eUmKCeFJ6k4h6dJpFceMrB3icc2RXV2ykvEM8fJMfh"),
            participants: (0..participants)
                .map(|i| NodeId(format!("12D3KooW{i:044}")))
                .collect(),
            base_version: 41,
            base_digest: [7; 32],
            hyper: Hyper::default(),
            deadline_ms: 60_000,
            scaler: None,
        }),
    )
}

fn control(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    for n in [3, 100] {
        let env = plan(n);
        let bytes = env.encode().unwrap();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("encode_round_plan_{n}"), |b| {
            b.iter(|| black_box(&env).encode().unwrap())
        });
        g.bench_function(format!("decode_round_plan_{n}"), |b| {
            b.iter(|| Envelope::decode(black_box(&bytes)).unwrap())
        });
    }
    g.finish();
}

fn data(c: &mut Criterion) {
    let payload = vec![0x5a_u8; 1 << 20];
    let frame = Frame {
        header: DataRequest::PushUpdate(UpdateHeader {
            round: 1,
            term: 1,
            samples: 1000,
            train_loss: 0.1,
            total_len: 1 << 20,
            offset: 0,
            trace: None,
        }),
        payload,
    };
    let bytes = frame.encode().unwrap();
    let mut g = c.benchmark_group("frame_1mib");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode", |b| b.iter(|| black_box(&frame).encode().unwrap()));
    g.bench_function("decode", |b| {
        b.iter(|| Frame::<DataRequest>::decode(black_box(&bytes)).unwrap())
    });
    g.bench_function("blake3", |b| b.iter(|| digest_of(black_box(&bytes))));
    g.finish();
}

criterion_group!(benches, control, data);
criterion_main!(benches);

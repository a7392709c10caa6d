//! RSA-2048 key generation, the CPU cost of every key create.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};

use signet::keys::{generate, generate_with_rsa_crate, Bits, KeySpec};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("keygen");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("rsa2048 signet (aws-lc-rs)", |b| {
        b.iter(|| black_box(generate(KeySpec::default())))
    });
    group.bench_function("rsa2048 rsa crate", |b| {
        b.iter(|| black_box(generate_with_rsa_crate(Bits::B2048)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

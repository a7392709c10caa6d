//! Key generation, the CPU cost of every key create: RSA-2048 (pooled by
//! the server), and ES256, ES384 and Ed25519 (made inline, never pooled).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};

use signet::keys::{generate, generate_with_rsa_crate, Algorithm, Bits, KeySpec};

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

    let mut group = c.benchmark_group("keygen_curves");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
        let spec = KeySpec::new(alg, None).unwrap();
        group.bench_function(format!("{alg} signet (aws-lc-rs) with PKCS#8 PEM"), |b| {
            b.iter(|| black_box(generate(spec).pkcs8_pem()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

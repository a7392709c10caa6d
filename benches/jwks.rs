//! Preparing the published JWK Sets: building them from N keys at startup,
//! and republishing after one key is added to a 50,000-key set; serving
//! them unchanged from a 50,000-key set: the global document (on one
//! thread, and on two at once, as the server's two workers ask) and an
//! organisation's kept document.
//!
//! One RSA key is generated and its SPKI reused under distinct key ids
//! (five keys per organisation): the documents' cost does not depend on
//! the keys being different, and generating 50,000 keys would take hours.

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};

use signet::jwks::Jwks;
use signet::keys::{generate, KeyId, KeyName, KeySpec, OrgId, PublicKeyRecord};

const KEYS_PER_ORG: usize = 5;

fn record(spki: &[u8], org: usize, serial: u64) -> PublicKeyRecord {
    PublicKeyRecord {
        // Distinct, increasing ids, as ULIDs minted one after another are.
        id: KeyId::new(ulid::Ulid::from_parts(1_700_000_000_000 + serial, 0)),
        org: OrgId::parse(&format!("org-{org:05}")).unwrap(),
        name: KeyName::parse("bench key").unwrap(),
        spec: KeySpec::default(),
        spki_der: spki.to_vec(),
        created_at_ms: 1_700_000_000_000 + serial,
        life: Default::default(),
    }
}

fn records(spki: &[u8], n: usize) -> Vec<PublicKeyRecord> {
    (0..n)
        .map(|i| record(spki, i / KEYS_PER_ORG, i as u64))
        .collect()
}

fn bench(c: &mut Criterion) {
    let spki = generate(KeySpec::default()).spki_der().to_vec();

    let mut group = c.benchmark_group("jwks_build");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for n in [5usize, 1_000, 50_000] {
        let recs = records(&spki, n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &recs, |b, recs| {
            b.iter(|| {
                let jwks = Jwks::new(black_box(recs));
                black_box(jwks.all().body.len())
            })
        });
    }
    group.finish();

    // Republishing: one more key in an existing organisation of a 50k set.
    // Only `added` is timed; the key is removed again (untimed) so the set
    // stays at 50,000 keys.
    let n = 50_000;
    let jwks = Jwks::new(&records(&spki, n));
    println!("50k-key JWKS document: {} bytes", jwks.all().body.len());
    let serial = Cell::new(n as u64);
    let mut group = c.benchmark_group("jwks_republish");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("added_to_50000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let s = serial.get();
                serial.set(s + 1);
                let r = record(&spki, 1234, s);
                let start = Instant::now();
                jwks.added(black_box(&r));
                total += start.elapsed();
                jwks.removed(&r.org, r.id);
            }
            total
        })
    });
    group.finish();

    // Serving unchanged documents: what a repeated request costs.
    let orgs: Vec<OrgId> = (0..n / KEYS_PER_ORG)
        .map(|i| OrgId::parse(&format!("org-{i:05}")).unwrap())
        .collect();
    let mut group = c.benchmark_group("jwks_serve");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("all_unchanged", |b| b.iter(|| black_box(jwks.all())));
    group.bench_function("all_unchanged_two_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| (0..iters).for_each(|_| drop(black_box(jwks.all()))));
                }
            });
            // Each thread's time per request while the other asks too.
            start.elapsed()
        })
    });
    let at = Cell::new(0usize);
    orgs.iter().for_each(|org| drop(jwks.of(org)));
    group.bench_function("of_kept", |b| {
        b.iter(|| {
            at.set((at.get() + 7919) % orgs.len());
            black_box(jwks.of(&orgs[at.get()]))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! How long `signet audit verify` takes to walk 100,000 events.

use criterion::{criterion_group, criterion_main, Criterion};
use signet::audit::{Action, Actor, NewEvent};
use signet::keys::OrgId;
use signet::seal::Sealer;
use signet::store::sled::SledStore as Store;

fn audit_verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Sealer::from_keys(&[[1; 32]])).unwrap();
    let orgs: Vec<OrgId> = (0..100)
        .map(|i| OrgId::parse(&format!("org{i}")).unwrap())
        .collect();
    for i in 0..100_000 {
        let event = NewEvent {
            action: Action::AccessDenied,
            key_id: None,
            actor: Actor::Anonymous,
            client: Some("127.0.0.1".into()),
            outcome: "401".into(),
        };
        store.record_event(&orgs[i % orgs.len()], event).unwrap();
    }
    store.sync().unwrap();
    assert_eq!(store.verify_audit().unwrap(), Ok(100_000));
    let mut group = c.benchmark_group("audit");
    group.sample_size(10);
    group.bench_function("verify 100k events in 100 organisations", |b| {
        b.iter(|| store.verify_audit().unwrap().unwrap())
    });
    group.finish();
}

criterion_group!(benches, audit_verify);
criterion_main!(benches);

//! Key generation, and the pool of pre-generated RSA key pairs that hides
//! it: a create takes a ready key in microseconds instead of waiting
//! 50–500 ms. EC and Ed25519 keys take tens of microseconds to make, so
//! they are generated when asked for and never pooled. In memory only: a pooled key is never written anywhere, is
//! handed out at most once (popped), and is zeroized when dropped.
//!
//! All generation happens on `cores − 1` (at least one) dedicated threads,
//! never on an async worker, so that a burst of creates cannot take every
//! core from request handling. A create that finds the pool empty registers
//! its demand and waits for the next key of its size. Pools are per modulus
//! size: an RSA key pair serves any of the six RSA algorithms equally.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::keys::{self, Bits, GeneratedKey, KeySpec};

struct Inner {
    state: Mutex<State>,
    /// Wakes generator threads: demand rose, or the pool is closing.
    work: Condvar,
    /// Wakes waiting creates: a key was added.
    ready: Notify,
    targets: [usize; 3],
    depth: [Gauge; 3],
}

#[derive(Default)]
struct State {
    queues: [VecDeque<GeneratedKey>; 3],
    /// Creates waiting for a key of each size.
    wanted: [usize; 3],
    /// Keys of each size being generated right now.
    in_flight: [usize; 3],
    closed: bool,
}

impl State {
    /// The size most in need of a key, counting keys already being made.
    fn next_job(&self, targets: &[usize; 3]) -> Option<usize> {
        (0..3).find(|&i| self.queues[i].len() + self.in_flight[i] < targets[i] + self.wanted[i])
    }
}

pub struct KeyPool {
    inner: Arc<Inner>,
}

/// The queue of a size signet generates; `None` for any other.
fn slot(bits: Bits) -> Option<usize> {
    Bits::ALL.iter().position(|b| *b == bits)
}

impl KeyPool {
    /// Starts generator threads and a pool holding up to `targets[i]`
    /// ready keys of `Bits::ALL[i]` (zeros: generate only on demand).
    pub fn start(targets: [usize; 3], depth: [Gauge; 3]) -> KeyPool {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            ready: Notify::new(),
            targets,
            depth,
        });
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for n in 0..cores.saturating_sub(1).max(1) {
            let worker = inner.clone();
            std::thread::Builder::new()
                .name(format!("signet-keygen-{n}"))
                .spawn(move || generate_forever(&worker))
                .expect("cannot start a key generation thread");
        }
        KeyPool { inner }
    }

    /// A fresh key pair of `spec`: RSA from the pool, or the next one made;
    /// EC and Ed25519 made right here.
    pub async fn get(&self, spec: KeySpec) -> GeneratedKey {
        let KeySpec::Rsa { bits, .. } = spec else {
            return keys::generate(spec);
        };
        let Some(i) = slot(bits) else {
            return tokio::task::spawn_blocking(move || keys::generate(spec))
                .await
                .expect("key generation does not panic");
        };
        if let Some(key) = self.take(i) {
            return key;
        }
        let _demand = Demand::register(&self.inner, i);
        loop {
            let ready = self.inner.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(key) = self.take(i) {
                return key;
            }
            ready.await;
        }
    }

    fn take(&self, i: usize) -> Option<GeneratedKey> {
        let mut state = self.inner.state.lock().expect("pool lock poisoned");
        let key = state.queues[i].pop_front()?;
        self.inner.depth[i].set(state.queues[i].len() as i64);
        self.inner.work.notify_one();
        Some(key)
    }
}

/// A waiting create's claim on the next key of its size; withdrawn when the
/// create gets its key or is abandoned.
struct Demand<'a> {
    inner: &'a Inner,
    slot: usize,
}

impl<'a> Demand<'a> {
    fn register(inner: &'a Inner, slot: usize) -> Demand<'a> {
        inner.state.lock().expect("pool lock poisoned").wanted[slot] += 1;
        inner.work.notify_one();
        Demand { inner, slot }
    }
}

impl Drop for Demand<'_> {
    fn drop(&mut self) {
        self.inner.state.lock().expect("pool lock poisoned").wanted[self.slot] -= 1;
    }
}

impl Drop for KeyPool {
    fn drop(&mut self) {
        let mut state = self.inner.state.lock().expect("pool lock poisoned");
        state.closed = true;
        state.queues.iter_mut().for_each(VecDeque::clear);
        self.inner.work.notify_all();
    }
}

fn generate_forever(inner: &Inner) {
    loop {
        let job = {
            let mut state = inner.state.lock().expect("pool lock poisoned");
            loop {
                if state.closed {
                    return;
                }
                if let Some(i) = state.next_job(&inner.targets) {
                    state.in_flight[i] += 1;
                    break i;
                }
                state = inner.work.wait(state).expect("pool lock poisoned");
            }
        };
        let key = keys::generate(KeySpec::Rsa {
            alg: keys::Algorithm::RS256,
            bits: Bits::ALL[job],
        });
        let mut state = inner.state.lock().expect("pool lock poisoned");
        state.in_flight[job] -= 1;
        if state.closed {
            return;
        }
        state.queues[job].push_back(key);
        inner.depth[job].set(state.queues[job].len() as i64);
        inner.ready.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::PublicKeyParts;

    #[tokio::test(flavor = "multi_thread")]
    async fn keys_are_handed_out_once_and_a_burst_beyond_the_pool_is_served() {
        let pool = Arc::new(KeyPool::start([3, 0, 0], Default::default()));
        let takers: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let key = pool.get(KeySpec::default()).await;
                    key.rsa_private().unwrap().n().to_bytes_be()
                })
            })
            .collect();
        let mut moduli = std::collections::HashSet::new();
        for t in takers {
            assert!(
                moduli.insert(t.await.unwrap()),
                "a key was handed out twice"
            );
        }
        // A size with no target is generated on demand.
        let big = pool
            .get(KeySpec::Rsa {
                alg: keys::Algorithm::PS256,
                bits: Bits::B3072,
            })
            .await;
        assert_eq!(big.rsa_private().unwrap().size() * 8, 3072);
        // EC and Ed25519 keys are made on the spot, outside the pool.
        for alg in [keys::Algorithm::ES256, keys::Algorithm::EdDSA] {
            let key = pool.get(KeySpec::new(alg, None).unwrap()).await;
            assert!(key.rsa_private().is_none() && !key.spki_der().is_empty());
        }
        let state = pool.inner.state.lock().unwrap();
        assert_eq!(state.wanted, [0, 0, 0], "every demand was withdrawn");
        assert!(
            state.queues[1].is_empty(),
            "on-demand sizes are not stocked"
        );
    }
}

//! Pre-generated RSA key pairs, so that a create does not wait 50–500 ms
//! for generation. In memory only: a pooled key is never written anywhere,
//! is handed out at most once (popped), and is zeroized when dropped.
//!
//! One background thread refills the pool, one key at a time, so refilling
//! uses at most one core and never an async worker. Pools are per modulus
//! size: an RSA key pair serves any of the six algorithms equally.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use prometheus_client::metrics::gauge::Gauge;

use crate::keys::{self, Bits, GeneratedKey};

struct Inner {
    queues: Mutex<State>,
    wake: Condvar,
    targets: [usize; 3],
    depth: [Gauge; 3],
}

struct State {
    queues: [VecDeque<GeneratedKey>; 3],
    closed: bool,
}

pub struct KeyPool {
    inner: Arc<Inner>,
}

fn slot(bits: Bits) -> usize {
    match bits {
        Bits::B2048 => 0,
        Bits::B3072 => 1,
        Bits::B4096 => 2,
    }
}

impl KeyPool {
    /// Starts a pool holding up to `targets[i]` keys of `Bits::ALL[i]`.
    /// All zeros disables it (no thread is started).
    pub fn start(targets: [usize; 3], depth: [Gauge; 3]) -> KeyPool {
        let inner = Arc::new(Inner {
            queues: Mutex::new(State {
                queues: Default::default(),
                closed: false,
            }),
            wake: Condvar::new(),
            targets,
            depth,
        });
        if targets.iter().any(|&t| t > 0) {
            let worker = inner.clone();
            std::thread::Builder::new()
                .name("signet-keypool".into())
                .spawn(move || refill(&worker))
                .expect("cannot start the key pool thread");
        }
        KeyPool { inner }
    }

    /// A fresh key pair of `bits`, if one is ready.
    pub fn take(&self, bits: Bits) -> Option<GeneratedKey> {
        let i = slot(bits);
        let mut state = self.inner.queues.lock().expect("pool lock poisoned");
        let key = state.queues[i].pop_front()?;
        self.inner.depth[i].set(state.queues[i].len() as i64);
        self.inner.wake.notify_one();
        Some(key)
    }
}

impl Drop for KeyPool {
    fn drop(&mut self) {
        let mut state = self.inner.queues.lock().expect("pool lock poisoned");
        state.closed = true;
        state.queues.iter_mut().for_each(VecDeque::clear);
        self.inner.wake.notify_all();
    }
}

fn refill(inner: &Inner) {
    loop {
        let next = {
            let mut state = inner.queues.lock().expect("pool lock poisoned");
            loop {
                if state.closed {
                    return;
                }
                let short = (0..3).find(|&i| state.queues[i].len() < inner.targets[i]);
                match short {
                    Some(i) => break i,
                    None => state = inner.wake.wait(state).expect("pool lock poisoned"),
                }
            }
        };
        let key = keys::generate(Bits::ALL[next]);
        let mut state = inner.queues.lock().expect("pool lock poisoned");
        if state.closed {
            return;
        }
        state.queues[next].push_back(key);
        inner.depth[next].set(state.queues[next].len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::PublicKeyParts;

    #[test]
    fn pooled_keys_are_handed_out_once_and_a_drained_pool_refills() {
        let pool = KeyPool::start([3, 0, 0], Default::default());
        let mut moduli = std::collections::HashSet::new();
        for _ in 0..8 {
            let key = loop {
                match pool.take(Bits::B2048) {
                    Some(k) => break k,
                    None => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            };
            assert!(
                moduli.insert(key.private().n().to_bytes_be()),
                "a key was handed out twice"
            );
        }
        assert!(
            pool.take(Bits::B4096).is_none(),
            "sizes without a target are never pooled"
        );
    }
}

//! Request ids for requests that bring none: a per-process prefix and a
//! counter, unique within the process and short enough to read in logs.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use hyper::header::HeaderValue;

/// Eight Crockford base32 characters, random per process.
const PREFIX_LEN: usize = 8;

/// `PREFIX-COUNTER`: the prefix, a dash and up to 20 decimal digits.
const MAX_LEN: usize = PREFIX_LEN + 1 + 20;

/// The next block of ids no thread has taken.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// How many ids a thread takes at once: the shared counter is written once
/// per this many requests, not by every request on every core.
const BLOCK: u64 = 1024;

thread_local! {
    /// This thread's next id and the end of its block.
    static TAKEN: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// The per-process prefix: the random part of a ULID made at first use,
/// so that two processes (or one restarted) do not repeat each other's ids.
fn prefix() -> &'static [u8; PREFIX_LEN] {
    static PREFIX: OnceLock<[u8; PREFIX_LEN]> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let ulid = ulid::Ulid::new().to_string();
        let mut p = [0; PREFIX_LEN];
        p.copy_from_slice(&ulid.as_bytes()[ulid.len() - PREFIX_LEN..]);
        p
    })
}

/// The next id of this process, e.g. `7ZK3QW1M-42`. Ids are unique
/// within the process; each thread counts up through blocks of its own, so
/// they are not in the order requests came.
pub fn next() -> HeaderValue {
    format(prefix(), take())
}

fn take() -> u64 {
    TAKEN.with(|taken| {
        let (mut next, mut end) = taken.get();
        if next == end {
            next = NEXT.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        taken.set((next + 1, end));
        next
    })
}

fn format(prefix: &[u8; PREFIX_LEN], n: u64) -> HeaderValue {
    let mut buf = [0u8; MAX_LEN];
    buf[..PREFIX_LEN].copy_from_slice(prefix);
    buf[PREFIX_LEN] = b'-';
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = PREFIX_LEN + 1 + (digits.len() - i);
    buf[PREFIX_LEN + 1..len].copy_from_slice(&digits[i..]);
    HeaderValue::from_bytes(&buf[..len]).expect("base32, a dash and digits are a valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefix_dash_counter() {
        let p = *b"7ZK3QW1M";
        assert_eq!(format(&p, 0), "7ZK3QW1M-0");
        assert_eq!(format(&p, 42), "7ZK3QW1M-42");
        assert_eq!(format(&p, u64::MAX), "7ZK3QW1M-18446744073709551615");
    }

    #[test]
    fn ids_are_unique_across_threads_and_blocks() {
        let per_thread = usize::try_from(BLOCK).unwrap() * 2 + 3;
        let taken: Vec<Vec<u64>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..per_thread).map(|_| take()).collect()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let all: std::collections::HashSet<u64> = taken.iter().flatten().copied().collect();
        assert_eq!(all.len(), 4 * per_thread, "an id was handed out twice");
    }

    #[test]
    fn ids_of_one_process_differ_and_share_the_prefix() {
        let (a, b) = (next(), next());
        assert_ne!(a, b);
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert!(a.len() > PREFIX_LEN + 1);
        assert_eq!(a[..PREFIX_LEN + 1], b[..PREFIX_LEN + 1]);
    }
}

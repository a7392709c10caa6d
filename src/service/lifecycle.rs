//! How long keys live: the configured lifetimes, and the expiry a new key
//! gets under them. What expiry does to a key (it is withheld at its
//! second) is the registry's.

use std::time::Duration;

use super::ServiceError;
use crate::keys::rfc3339;

/// How long keys live: `keys.max_lifetime` and `keys.default_lifetime`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetimes {
    pub max: Option<Duration>,
    pub default: Option<Duration>,
}

impl Lifetimes {
    /// The expiry of a key created at `now` that asked for `requested`
    /// (seconds since the epoch): in the future and within the cap. Without
    /// a request, the default lifetime applies, or else the cap.
    pub fn expiry(&self, requested: Option<u64>, now: u64) -> Result<Option<u64>, ServiceError> {
        let time = |secs: u64| rfc3339(secs.saturating_mul(1000));
        let cap = self.max.map(|max| (max, now.saturating_add(max.as_secs())));
        match requested {
            Some(at) if at <= now => Err(ServiceError::Lifetime(format!(
                "expiresAt {} is not in the future",
                time(at)
            ))),
            Some(at) => match cap {
                Some((max, latest)) if at > latest => Err(ServiceError::Lifetime(format!(
                    "expiresAt {} is beyond keys.max_lifetime ({}): the latest allowed now is {}",
                    time(at),
                    whole_units(max),
                    time(latest)
                ))),
                _ => Ok(Some(at)),
            },
            None => Ok(self
                .default
                .or(self.max)
                .map(|life| now.saturating_add(life.as_secs()))),
        }
    }
}

/// A duration in the largest whole unit that fits (`90d`, `36h`, `90s`).
fn whole_units(d: Duration) -> String {
    let secs = d.as_secs();
    [(86_400, "d"), (3_600, "h"), (60, "m")]
        .into_iter()
        .find(|(unit, _)| secs % unit == 0 && secs > 0)
        .map_or(format!("{secs}s"), |(unit, name)| {
            format!("{}{name}", secs / unit)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_hold_requests_to_the_cap() {
        let day = Duration::from_secs(86_400);
        let now = 1_000_000;
        let capped = Lifetimes {
            max: Some(day * 90),
            default: Some(day),
        };
        let cap_only = Lifetimes {
            max: Some(day),
            default: None,
        };
        type Case = (Lifetimes, Option<u64>, Result<Option<u64>, &'static str>);
        let cases: &[Case] = &[
            (Lifetimes::default(), None, Ok(None)),
            (Lifetimes::default(), Some(now + 1), Ok(Some(now + 1))),
            (Lifetimes::default(), Some(now), Err("not in the future")),
            (capped, None, Ok(Some(now + 86_400))),
            (capped, Some(now + 90 * 86_400), Ok(Some(now + 90 * 86_400))),
            (
                capped,
                Some(now + 90 * 86_400 + 1),
                Err("keys.max_lifetime (90d)"),
            ),
            (cap_only, None, Ok(Some(now + 86_400))),
            (cap_only, Some(now - 5), Err("not in the future")),
        ];
        for (lifetimes, requested, expected) in cases {
            let got = lifetimes.expiry(*requested, now).map_err(|e| e.to_string());
            match (expected, got) {
                (Ok(want), Ok(got)) => assert_eq!(got, *want, "{lifetimes:?} {requested:?}"),
                (Err(needle), Err(got)) => assert!(got.contains(needle), "{got}"),
                (want, got) => panic!("{lifetimes:?} {requested:?}: {got:?}, wanted {want:?}"),
            }
        }
    }
}

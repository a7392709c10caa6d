//! The verification policy a configuration asks for.

use std::time::Duration;

use super::Policy;
use crate::config::Verify;

impl From<&Verify> for Policy {
    fn from(verify: &Verify) -> Policy {
        Policy {
            leeway: Duration::from_secs(verify.leeway_secs),
            require_exp: verify.require_exp,
            max_token_bytes: verify.max_token_bytes,
            cache_capacity: verify.cache_capacity,
            max_token_lifetime: verify.max_token_lifetime,
        }
    }
}

//! signet: a single-binary signing-key service. It issues RSA, EC and Ed25519
//! key pairs, keeps only their public halves, publishes them as PEM and JWK
//! Sets, and verifies JWTs signed by them. See ARCHITECTURE.md for the map.

#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod events;
pub mod feed;
pub mod follower;
pub mod followers;
pub mod freshness;
pub mod http;
pub mod jwks;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod refusals;
pub mod registry;
pub mod replica;
pub mod seal;
pub mod secret_file;
pub mod service;
pub mod store;
pub mod usage;
pub mod verify;

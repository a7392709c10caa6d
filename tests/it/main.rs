//! signet's integration tests: the real server on port 0 with a temp data
//! dir, spoken to over HTTP; the real binary for the CLI and crash tests.

#[macro_use]
mod backends;
mod access;
mod algorithms;
mod anonymous;
mod audit_cursor;
mod bad_input;
mod cli;
mod cli_messages;
mod cli_remote;
mod cli_stdout;
mod cli_waits;
mod cluster;
mod console;
mod deadlines;
mod durability;
mod faultproxy;
mod followers;
mod jwks_global;
mod keys_api;
mod lifecycle;
mod lifecycle_races;
mod no_data;
mod operations;
mod partitions;
mod pg;
mod pgbouncer;
mod postgres;
mod redaction;
mod request_log;
mod revocation_order;
mod sealing;
mod subscribers;
mod support;
mod tidy;
mod tls;
mod token_cache;
mod token_cache_liveness;
mod tokens;
mod upload;
mod usage;
mod verdicts;
mod verify_api;
mod walkthrough;

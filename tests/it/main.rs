//! signet's integration tests: the real server on port 0 with a temp data
//! dir, spoken to over HTTP; the real binary for the CLI and crash tests.

#[macro_use]
mod backends;
mod access;
mod bad_input;
mod cli;
mod cluster;
mod durability;
mod keys_api;
mod no_data;
mod operations;
mod pg;
mod postgres;
mod sealing;
mod support;
mod tidy;
mod tokens;
mod verify_api;

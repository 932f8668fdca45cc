//! Integration tests: the real daemon on port 0 with a temporary database, one module per
//! concern. One crate, so the library is linked once for all of them.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod cli;
mod config;
mod crash;
mod digest;
mod disk;
mod edge;
mod filters;
mod fuzz_regressions;
mod handlers;
mod ingest;
mod limits;
mod older_records;
mod openapi;
mod operations;
mod pg_config;
mod pg_harness;
mod pg_reads;
mod pg_store;
mod projection;
mod properties;
mod queries;
mod recovery;
mod replicas;
mod retention;
mod sync;
mod upgrade;
mod vectors;

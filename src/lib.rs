//! rebilly-webhookd: a durable receiver for Rebilly webhooks with a local customer projection.
//!
//! The data path reads top to bottom: [`http`] receives a delivery, [`auth`] checks the raw
//! request, [`event`] parses the body into the typed model, [`ingest`] hands it to [`storage`]
//! whose writer commits the event and the [`handlers::projection`] in one transaction, then
//! [`dispatch`] feeds the asynchronous handlers from the log. [`query`] parses list queries and
//! Rebilly's filter grammar, which storage runs against the projection; [`cli`] is the command
//! line over the same calls. [`timestamp`] reads date-times in every form Rebilly has written,
//! and [`outcome`] names what became of a delivery.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod event;
pub mod handlers;
pub mod http;
pub mod ingest;
pub mod log_limit;
pub mod outcome;
pub mod progress;
pub mod query;
pub mod retention;
pub mod secret;
pub mod send;
pub mod server;
pub mod storage;
pub mod sync;
pub mod telemetry;
pub mod timestamp;

//! The PostgreSQL backend, for several daemons sharing one database.

// Wiring in progress: removed once PgStore calls every function.
#![allow(dead_code)]

mod handler_state;
mod reads;
mod retention;

//! The `switchboard` binary's library half: configuration (and its usage hints), the admin
//! listener, the demo backends, `switchboard check`, and the wiring that starts every piece.
//! `main.rs` only parses the command line.
#![forbid(unsafe_code)]

pub mod admin;
pub mod check;
pub mod config;
pub mod demo;
pub mod hints;
pub mod run;
pub mod status;

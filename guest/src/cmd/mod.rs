//! The long-running subcommands, `setup`, `watch` and `health`: each draws on several of
//! the other folders (clock, module, network, system), so they sit above them, and
//! `main.rs` stays a thin parser that hands over.

pub mod health;
pub mod setup;
pub mod watch;

//! SSH: keys, pinned host keys, and the OpenSSH client invocations that use them.

pub mod client;
pub mod config;
pub mod keys;

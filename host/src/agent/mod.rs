//! The guest agent as the host sees it: finding a binary (or source bundle) to put on the
//! seed, and talking to the installed agent over SSH.

pub mod bundle;
pub mod elf;
pub mod locate;
pub mod remote;

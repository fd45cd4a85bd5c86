//! Host-side state: where it lives, what a guest is, and how it is written.

pub mod home;
pub mod name;
pub mod size;
pub mod spec;
pub mod vm;

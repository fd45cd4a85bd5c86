//! almavmm-host: provision, run and check AlmaLinux guests on OpenBSD vmd or Linux QEMU.
//!
//! The binary (`main.rs`) only parses arguments and maps errors to exit codes; each command
//! lives in `cmd/`, and the modules it uses are named for what they do. They form layers,
//! lowest first, and import only from below (tests/layers.rs holds the table and fails on
//! an import against it): `exit`, `check` → `state`, `ui` → `hostsetup` → `backend` →
//! `ssh` → `clock`, `agent`, `proxy`, `image`, `seed` → `doctor`, `lifecycle`, `args` →
//! `cmd` → `cli`.

pub mod agent;
pub mod args;
pub mod backend;
pub mod check;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod doctor;
pub mod exit;
pub mod hostsetup;
pub mod image;
pub mod lifecycle;
pub mod proxy;
pub mod seed;
pub mod ssh;
pub mod state;
pub mod ui;

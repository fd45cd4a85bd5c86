//! One module per subcommand: its arguments (clap) and its `run`.

pub mod console;
pub mod destroy;
pub mod doctor;
pub mod host;
pub mod image;
pub mod seed;
pub mod ssh_config;
pub mod ssh_proxy;
pub mod start;
pub mod status;
pub mod stop;
pub mod sync;
pub mod up;
pub mod which_agent;

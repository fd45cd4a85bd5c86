//! The guest's clocks: reading and stepping them, the RTC, what the hypervisor offers and
//! so which clocksource to follow the host with, the host's probe, and the log of what
//! happened to the clock. Together because the watcher, setup and `clock …` all reason
//! about the same clocks, and none of it needs the module or the network.

pub mod events;
pub mod hypervisor;
pub mod ops;
pub mod path;
pub mod probe;
pub mod rtc;
pub mod source;
pub mod timekeeping;

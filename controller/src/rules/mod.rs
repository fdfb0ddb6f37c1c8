//! Rule files: when to act and how. `model` is the format, `load` reads and validates a
//! directory of them (all or nothing), `watch` reloads them on change or SIGHUP.

pub mod load;
pub mod model;
pub mod watch;

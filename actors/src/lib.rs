//! Switchboard's actor crate: the supervision tree, sessions, the inference pool, and the
//! model code they use.

pub mod inference;
pub mod model;
pub mod platforms;
pub mod session;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tree;

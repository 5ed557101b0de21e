//! Switchboard's actor crate: the supervision tree, the message path (ingress → session →
//! egress), the inference pool, storage and the model code they use.

pub mod egress;
pub mod inference;
pub mod ingress;
pub mod message;
pub mod model;
pub mod names;
pub mod platforms;
pub mod session;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tree;

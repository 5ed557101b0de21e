//! The Switchboard daemon: configuration, HTTP routes and wiring of the actor tree
//! (the actors themselves live in the `switchboard-actors` crate).

pub mod config;
pub mod daemon;
pub mod http;

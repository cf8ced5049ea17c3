//! Preloading: the refresh decision, one pass over the list and its outcomes, the `run` loop, its
//! schedule, the status feed it publishes and the metrics kept from it.

pub mod cycle;
pub mod metrics;
pub mod outcome;
pub mod pass;
pub mod policy;
pub mod schedule;
pub mod status;

#[cfg(test)]
mod tests;

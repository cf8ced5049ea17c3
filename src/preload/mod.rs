//! Preloading: the refresh decision, one pass over the list and its outcomes, the `run` loop, its
//! schedule and the status feed it publishes.

pub mod cycle;
pub mod outcome;
pub mod pass;
pub mod policy;
pub mod schedule;
pub mod status;

#[cfg(test)]
mod tests;

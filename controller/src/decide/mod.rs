//! Decide: which rules fire, on which nodes, and whether their guards let them act.
//!
//! `facts` is what the controller currently knows per node (latest values, log signatures, last
//! sightings); `conditions` turns a rule's `when` into firing matches that have held for `for`;
//! `guards` applies cooldowns, rate limits, blast radius, dry-run and approval. Acting,
//! verifying and auditing come after this module.

pub mod conditions;
pub mod facts;
pub mod guards;

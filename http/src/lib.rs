//! Cairn's HTTP conventions, shared by the write routes, the read routes and the binary:
//! one error type with one JSON body ([`ApiError`], [`ErrorBody`]), one rule for
//! `Retry-After` ([`retry_after`]), and the extractors every job's routes read requests
//! with ([`ClientIp`], [`IdempotencyKey`]).
//!
//! It depends on `cairn-events` only (store errors map to answers here, once), so the
//! command and query crates can both use it without depending on each other.
#![forbid(unsafe_code)]

pub mod client_ip;
mod error;
mod idempotency;

pub use client_ip::ClientIp;
pub use error::{ApiError, ErrorBody, retry_after};
pub use idempotency::{IdempotencyKey, InvalidIdempotencyKey};

//! Event payloads: the contract shared by the write side, the read side and the scheduler.
//! Each type's constructor-validated fields ("parse, don't validate") live beside it.

pub mod backup;
pub mod capsule;
pub mod email;
pub mod export;
pub mod message;
pub mod user;
pub mod webhook;

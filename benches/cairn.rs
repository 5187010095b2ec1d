//! The performance figures of the README.
fn main() {}

//! `infinity-run`: inference front end (argument parsing and progress only).
fn main() {}

//! `infinity-run`: inference front end.
fn main() {}

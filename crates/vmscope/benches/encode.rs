//! Encode benchmark (being written).
fn main() {}

//! PostgreSQL mints per second (placeholder).

fn main() {}

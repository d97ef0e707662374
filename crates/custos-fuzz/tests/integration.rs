//! Every fuzz target on stable: replayed over its seed corpus, then fed arbitrary bytes.

mod it;

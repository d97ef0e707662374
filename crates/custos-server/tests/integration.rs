//! The HTTP surface in-process ([`custos_test_support::TestApp`]): lifetimes and expiry with a
//! manual clock, no sleeping.

mod it;

mod append;
mod encoding;
mod support;
mod tamper;

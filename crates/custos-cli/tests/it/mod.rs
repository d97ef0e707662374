mod support;

mod auth;
mod quickstart;

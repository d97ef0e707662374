mod support;

mod approvals;
mod audit_tamper;
mod auth;
mod badinput;
mod connections;
mod eras;
mod hardening_inputs;
mod leases;
mod pipeline;
mod policy;
mod postgres;
mod python_client;
mod quickstart;
mod surface;
mod upstream_scope;
mod webdriver;

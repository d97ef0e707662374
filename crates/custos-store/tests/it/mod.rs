mod audit;
mod connect;
mod identity;
mod resources;
mod tamper;
mod tasks;

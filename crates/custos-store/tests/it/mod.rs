mod approvals;
mod audit;
mod connect;
mod identity;
mod leases;
mod resources;
mod tamper;
mod tasks;

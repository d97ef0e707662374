mod leases;
mod lifetimes;

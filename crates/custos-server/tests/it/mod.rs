mod lifetimes;

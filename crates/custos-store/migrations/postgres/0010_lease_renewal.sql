-- Lease renewal: when a lease was last renewed (Vault's `last_renewal`); null until then.
ALTER TABLE leases ADD COLUMN renewed_at BIGINT;

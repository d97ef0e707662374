#!/usr/bin/env bash
# Creates what examples/credentials.yaml grants access to, on this machine's servers:
# PostgreSQL (127.0.0.1:5432, user postgres): database `custos_example`, table `orders`, group
# roles `example_readonly` / `example_readwrite`; MariaDB (127.0.0.1:3306, root): database
# `custos_example` with table `orders`. Redis needs nothing. Safe to run again.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -q -h 127.0.0.1 -U postgres -d postgres <<'SQL'
SELECT 'CREATE DATABASE custos_example'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'custos_example')\gexec
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'example_readonly') THEN
    CREATE ROLE example_readonly NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'example_readwrite') THEN
    CREATE ROLE example_readwrite NOLOGIN;
  END IF;
END $$;
GRANT CONNECT ON DATABASE custos_example TO example_readonly, example_readwrite;
SQL
psql -v ON_ERROR_STOP=1 -q -h 127.0.0.1 -U postgres -d custos_example <<'SQL'
CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, customer text NOT NULL, total numeric NOT NULL);
GRANT USAGE ON SCHEMA public TO example_readonly, example_readwrite;
GRANT SELECT ON orders TO example_readonly;
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO example_readwrite;
GRANT USAGE ON SEQUENCE orders_id_seq TO example_readwrite;
SQL
mariadb -h 127.0.0.1 -u root <<'SQL'
CREATE DATABASE IF NOT EXISTS custos_example;
CREATE TABLE IF NOT EXISTS custos_example.orders (id INT AUTO_INCREMENT PRIMARY KEY, customer TEXT NOT NULL, total DECIMAL(10,2) NOT NULL);
SQL
echo "ready: export CUSTOS_EXAMPLE_PG=postgres://postgres@127.0.0.1:5432/custos_example CUSTOS_EXAMPLE_MARIADB=mysql://root@127.0.0.1:3306/custos_example CUSTOS_EXAMPLE_REDIS=redis://127.0.0.1:6379 before custos serve"

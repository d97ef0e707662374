//! The credential engines against the real servers on this machine: PostgreSQL
//! (`CUSTOS_TEST_PG`, else a throwaway cluster), MariaDB on 127.0.0.1:3306 (`CUSTOS_TEST_MYSQL`)
//! and Redis on 127.0.0.1:6379 (`CUSTOS_TEST_REDIS`). Every test makes its own database, group
//! roles and key namespace with random names, and removes them.

mod it;

//! The store's queries against both backends: every test body runs once on a fresh SQLite
//! file and once on a fresh PostgreSQL database (`CUSTOS_TEST_PG`, else a throwaway cluster).

mod it;

//! End-to-end tests of the `custos` binary: a real server on a loopback port, the real CLI,
//! real MCP clients and upstreams.

mod it;

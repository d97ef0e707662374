//! The MCP gateway: an MCP server to agents (Streamable HTTP, both protocol eras) and an MCP
//! client to upstreams (stdio child processes and HTTP, both eras). Every `tools/call` runs
//! through the broker's pipeline; the agent's token never goes upstream.

pub mod jsonrpc;
mod server;
mod sessions;
pub mod upstream;

pub use server::{GatewayReply, McpGateway, McpRequest, McpVerb};
pub use sessions::{MAX_SESSIONS_PER_TASK, SessionMetrics};
pub use upstream::UpstreamPool;

/// The protocol version of the stateless era.
pub const MODERN_VERSION: &str = "2026-07-28";
/// Protocol versions of the session era this gateway accepts, newest first.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
